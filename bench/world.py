"""The bench world: the lab, both contenders, the traffic generators, shared helpers.

See bench/README.md for the method; bench/sections.py measures with these.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import netio
from lab import ATTACKER4, ATTACKER6, SYSTEM_PYTHON, VICTIM4, VICTIM6, Lab, wait_until
from sensors import JournalWatch, Line, OurSensor, PortSentry

from sensor.alert import MESSAGE_ID

BENCH = Path(__file__).resolve().parent

PREFIX = "psbench"
SERVICE_PORT = 80
# Debian's stock PortSentry lists (bound and stealth modes watch these).
TCP_PORTS = ("1,11,15,79,111,119,143,540,635,1080,1524,2000,5742,6667,12345,12346,20034,27665,"
             "31337,32771,32772,32773,32774,40421,49724,54320")
UDP_PORTS = "1,7,9,69,161,162,513,635,640,641,700,37444,34555,31335,32770,32771,32772,32773,32774,31337,54321"
GRID_TCP = "1,79,111,143"   # in TCP_PORTS and below 1024
GRID_UDP = "1,7,9,69"
SCANS = (("-sS", "tcp"), ("-sT", "tcp"), ("-sF", "tcp"), ("-sN", "tcp"), ("-sX", "tcp"), ("-sU", "udp"))
MODE_PAIRS = (("tcp", "udp"), ("stcp", "sudp"), ("atcp", "audp"))
LATENCY_PORT = 79


class Contender(Protocol):
    """What run.py needs from a sensor."""

    name: str
    pids: list[int]

    def mark(self) -> int: ...

    def lines(self, start: int = 0) -> list[Line]: ...

    def stop(self) -> None: ...


@dataclass
class Settings:
    """Sizes of the run (full or --quick)."""

    samples: int = 25
    http_requests: int = 20_000
    spoof4: int = 100_000
    spoof6: int = 50_000
    spoof_rate: float = 10_000.0
    ban_samples: int = 20
    full_scan: bool = True


# --------------------------------------------------------------------------
# Small helpers.
def victim_mac(lab: Lab) -> str:
    """The victim's eth0 MAC address."""
    return lab.run_victim(["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()


def nmap(lab: Lab, ns: str, args: Sequence[str], timeout: float = 120) -> None:
    """Run nmap (no ping, no DNS, bounded) from a namespace."""
    base = ["nmap", "-n", "-Pn", "--host-timeout", f"{int(timeout) - 10}s"]
    lab.run_in(ns, [*base, *args], timeout=timeout)


def settle(target: Contender, quiet: float = 1.0, limit: float = 30.0) -> None:
    """Wait until the target has logged nothing new for ``quiet`` seconds (bounded)."""
    deadline = time.monotonic() + limit
    last, since = target.mark(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now_mark = target.mark()
        if now_mark != last:
            last, since = now_mark, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def drain_time_wait(lab: Lab, limit: float = 75.0) -> float:
    """Wait (bounded) until the victim holds no TIME_WAIT socket on a tripwire port; return seconds waited.

    A tripwire that accepted and closed connections leaves TIME_WAIT sockets for 60 s, and Linux
    refuses to bind a port while any of them lacks SO_REUSEADDR (PortSentry never sets it).  So the
    next sensor in bound mode would start without that port; wait instead.
    """
    tripwires = {int(p) for p in TCP_PORTS.split(",")}

    def clear() -> bool:
        out = lab.run_victim(["ss", "-tanH", "state", "time-wait"]).stdout
        ports = {int(line.split()[2].rsplit(":", 1)[1]) for line in out.splitlines() if len(line.split()) >= 4}
        return not ports & tripwires

    begun = time.monotonic()
    wait_until(clear, limit, step=1.0)
    return time.monotonic() - begun


def is_alert(line: Line) -> bool:
    """An attack alert (PortSentry also logs admin lines)."""
    return "attackalert" in line.text


# --------------------------------------------------------------------------
# The world.

class World:
    """The lab, the log collectors and both contenders."""

    def __init__(self, lab: Lab, journal: JournalWatch) -> None:
        self.lab = lab
        self.journal = journal
        self.mac = victim_mac(lab)
        self.injector = netio.Injector(lab.attacker, self.mac)
        self.ours = OurSensor(lab, journal)
        self.ours.message_id = str(MESSAGE_ID)
        self.ps = PortSentry(lab, [VICTIM4, VICTIM6])
        self.grid_attackers: list[tuple[str, str, str]] = []
        self.connect_round = 0
        # Sources for single samples: outside the flood's range and different in every run
        # (minute slot), so fail2ban's start-up scan of recent journal lines never pre-bans them.
        self.spoof_next = 100_000 + (int(time.time()) // 60 % 300) * 100
        self.spoof6_next = 1_000_000 + (int(time.time()) // 60 % 100_000) * 1000

    def fresh4(self) -> str:
        """A spoofed IPv4 source not used in this run or recent ones (latency and ban samples)."""
        self.spoof_next += 1
        return netio.spoof4(self.spoof_next)

    def fresh6(self) -> str:
        """A spoofed IPv6 source not used in this run or recent ones."""
        self.spoof6_next += 1
        return netio.spoof6(self.spoof6_next)

    def close(self) -> None:
        """Stop both sensors, close sockets."""
        for closer in (self.ours.close, self.ps.close, self.injector.close):
            try:
                closer()
            except Exception:
                traceback.print_exc()


def build_lab(lab: Lab) -> None:
    """Routes for the spoofed ranges (replies go to the attacker, which drops them), the service."""
    lab.run_victim(["ip", "route", "add", str(netio.SPOOF4), "via", ATTACKER4], check=True)
    lab.run_victim(["ip", "-6", "route", "add", "2001:db8:5000::/36", "via", ATTACKER6], check=True)
    server = lab.spawn_victim([SYSTEM_PYTHON, str(BENCH / "httpserve.py"), str(SERVICE_PORT)])
    if not wait_until(lambda: lab.listening(lab.victim, "tcp", SERVICE_PORT) or server.poll() is not None, 10):
        raise RuntimeError("bench HTTP service did not start")


def start_ours(world: World, modes: Sequence[str], advanced: int = 1024, log_target: str = "journal") -> None:
    """Our sensor in the given modes."""
    world.ours.start(modes, TCP_PORTS, UDP_PORTS, advanced, advanced, log_target)


def start_ps(world: World, modes: Sequence[str], advanced: int = 1024) -> None:
    """PortSentry, one daemon per mode."""
    world.ps.start(modes, advanced, advanced)
