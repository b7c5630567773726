"""A decoy flood plus a real scan, measured end to end (issue 11): shared by the e2e test and bench/.

The victim runs the sensor (advanced TCP mode, its own user, journald) and a
private fail2ban-server with the shipped jail pack (tests/e2e/f2b.py).  The
attacker namespace sends ``count4`` IPv4 (198.18.0.0/15) and ``count6`` IPv6
(2001:db8:5000::/36) forged one-SYN sources at ``rate`` packets per second
(bench/spoof.py: addressed to the victim's MAC only, bounded in count and
time), and ``scan_delay`` seconds in, a real ``nmap -sS -p 1-200`` from its
own address.  :func:`run_flood` returns what happened: the real scanner's
first-probe-to-ban time (from fail2ban's own log timestamps), forged addresses
banned, the sensor's journal lines, its peak RSS, fail2ban's CPU.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from f2b import Fail2Ban
from lab import (
    ATTACKER4,
    ATTACKER6,
    REPO_ROOT,
    SYSTEM_PYTHON,
    VICTIM4,
    VICTIM6,
    Journal,
    Lab,
    SensorProcess,
    wait_until,
)

SPOOF = (ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("2001:db8:5000::/36"))
SCAN_PORTS = "1-200"
SLOW4 = "192.0.2.77"   # the slow scanner's own address (a second attacker namespace)
FLOOD_PORTS = ",".join(str(p) for p in range(1, 1025) if p not in (113, 139))

SENSOR_CONF = """\
# portsentry-sensor e2e: decoy flood (issue 11); shipped defaults otherwise (FLOOD_SOURCES 20, FLOOD_PORTS 5)
TCP_MODE="atcp"
UDP_MODE="off"
ADVANCED_PORTS_TCP="1024"
SCAN_TRIGGER="0"
LOG_TARGET="journal"
"""


def jail_local(uid: int, pid: int) -> str:
    """The sensor's own lines only (_UID and _PID); a ban long enough to count them all."""
    return (f"[portsentry]\njournalmatch = _UID={uid} _PID={pid}\n"
            "bantime = 600\nfindtime = 600\nignoreip = 127.0.0.0/8 ::1\n")


@dataclass
class FloodResult:
    """What one run measured."""

    sent: int = 0
    flood_seconds: float = 0.0
    scan_to_ban: float | None = None      # first probe (upper bound: nmap's start) -> fail2ban 'Ban'
    forged_banned: int = 0
    banned: list[str] = field(default_factory=list)
    sensor_lines: int = 0
    alert_lines: int = 0
    forged_alert_lines: int = 0
    admin_lines: list[str] = field(default_factory=list)
    sensor_peak_rss_kb: int = 0
    f2b_cpu_s: float = 0.0
    f2b_peak_rss_kb: int = 0
    nmap_rc: int = 0
    slow_probes: int = 0
    slow_alert_after: float | None = None  # the slow scanner's first probe -> its first alert
    slow_alert_count: int = 0


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _forged(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in SPOOF if ip.version == net.version)


def ban_time(log: str, address: str) -> float | None:
    """The wall-clock time of fail2ban's first 'Ban <address>' line (its own timestamp)."""
    for line in log.splitlines():
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) .*\[portsentry\] Ban (\S+)", line)
        if match and match.group(3) == address:
            return time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
    return None


def prepare(lab: Lab) -> None:
    """Replies to forged sources go back to the attacker namespace (which drops them)."""
    lab.run_victim(["ip", "route", "add", str(SPOOF[0]), "via", ATTACKER4], check=True)
    lab.run_victim(["ip", "-6", "route", "add", str(SPOOF[1]), "via", ATTACKER6], check=True)


def run_flood(lab: Lab, journal: Journal, sensor_user: tuple[str, int, int], workdir: Path,
              count4: int, count6: int = 0, rate: float = 1000.0, scan_delay: float = 1.0,
              settle_timeout: float = 60.0, conf: str = SENSOR_CONF,
              slow_probes: int = 0, slow_interval: float = 20.0) -> FloodResult:
    """One run; the lab must be fresh (see :func:`prepare`).  Everything started here is stopped here."""
    prepare(lab)
    result = FloodResult()
    slow_ns = lab.add_attacker("s", SLOW4, "2001:db8::77") if slow_probes else ""
    slow_sent: list[float] = []

    def slow_scan() -> None:
        """One SYN to a new port every slow_interval seconds (bounded: slow_probes probes)."""
        for k in range(slow_probes):
            slow_sent.append(time.time())
            lab.nmap(["-sS", "--max-retries", "0", "-p", str(300 + k), VICTIM4], ns=slow_ns, timeout=30)
            time.sleep(max(0.0, slow_sent[-1] + slow_interval - time.time()))
    mac = lab.run_victim(["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()
    sensor = SensorProcess(lab, conf, user=sensor_user).start()
    f2b = Fail2Ban(lab, workdir, jail_local(sensor_user[1], sensor.pid))
    try:
        f2b.start()
        assert f2b.proc is not None
        cursor = journal.cursor()
        cpu0 = _cpu_seconds(f2b.proc.pid)
        max_seconds = (count4 + count6) / rate * 2 + 10
        flood = lab.spawn_attacker(
            [SYSTEM_PYTHON, str(REPO_ROOT / "bench" / "spoof.py"), "--mac", mac, "--dst4", VICTIM4,
             "--dst6", VICTIM6, "--count4", str(count4), "--count6", str(count6),
             "--tcp-ports", FLOOD_PORTS, "--rate", str(rate), "--max-seconds", str(max_seconds)],
            stdout=subprocess.PIPE, text=True)
        slow = threading.Thread(target=slow_scan, daemon=True)
        if slow_probes:
            slow.start()
        time.sleep(scan_delay)
        t0 = time.time()
        scan = lab.nmap(["-sS", "-T4", "-p", SCAN_PORTS, VICTIM4], timeout=60)
        result.nmap_rc = scan.returncode
        deadline = time.monotonic() + max_seconds + 30
        while flood.poll() is None and time.monotonic() < deadline:
            result.sensor_peak_rss_kb = max(result.sensor_peak_rss_kb, _status_kb(sensor.pid, "VmHWM"))
            time.sleep(0.5)
        out, _ = flood.communicate(timeout=30)
        if slow_probes:
            slow.join(timeout=slow_probes * (slow_interval + 30))
        if out.strip():
            summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            result.sent, result.flood_seconds = int(summary["sent"]), float(summary["seconds"])
        # The flood ends 5 s after its last busy second (sensor/flood.py QUIET), then fail2ban settles.
        journal.wait_for(cursor, lambda e: "flood ended" in e.get("MESSAGE", ""), timeout=30,
                         _PID=str(sensor.pid))
        last = [-1]

        def settled() -> bool:
            now = len(f2b.banned())
            done = now == last[0]
            last[0] = now
            return done
        wait_until(settled, settle_timeout, step=2.0)
        result.f2b_cpu_s = round(_cpu_seconds(f2b.proc.pid) - cpu0, 2)
        result.f2b_peak_rss_kb = _status_kb(f2b.proc.pid, "VmHWM")
        result.sensor_peak_rss_kb = max(result.sensor_peak_rss_kb, _status_kb(sensor.pid, "VmHWM"))
        result.banned = f2b.banned()
        result.forged_banned = sum(1 for a in result.banned if _forged(a))
        at = ban_time(f2b.log_text(), ATTACKER4)
        result.scan_to_ban = None if at is None else round(at - t0, 3)
        entries = sensor.entries(journal, cursor)
        result.sensor_lines = len(entries)
        alerts = [e for e in entries if e.get("MESSAGE", "").startswith("attackalert:")]
        result.alert_lines = len(alerts)
        result.forged_alert_lines = sum(1 for e in alerts if _forged(e.get("PORTSENTRY_SRC", "")))
        mine = [e for e in alerts if e.get("PORTSENTRY_SRC") == SLOW4]
        result.slow_probes = len(slow_sent)
        if mine and slow_sent:
            first = min(int(e["__REALTIME_TIMESTAMP"]) for e in mine) / 1e6
            result.slow_alert_after = round(first - slow_sent[0], 1)
            result.slow_alert_count = min(int(e["PORTSENTRY_COUNT"]) for e in mine)
        result.admin_lines = [e["MESSAGE"] for e in entries if e.get("MESSAGE", "").startswith("adminalert:")]
        return result
    finally:
        f2b.stop()
        sensor.close()
