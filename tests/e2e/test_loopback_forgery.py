"""A local user cannot get an address banned through the bound tripwires (issue 12, item 2).

In bound modes (TCP_MODE="tcp", UDP_MODE="udp") the sensor reads the source of a
datagram or connection from the socket.  A local user without any privilege can
bind a socket to an address that is not theirs with IPV6_FREEBIND and reach the
tripwires over the loopback interface:

* UDP: bound to 2001:db8:ffff::77 and sent to ::1 or to the host's own
  2001:db8::1 (the kernel routes both over ``lo``; IP_PKTINFO/IPV6_PKTINFO even
  name eth0 for the second one), the datagram arrives with that source;
* TCP: a handshake completes when the replies come back over ``lo`` too, which is
  the case for the subnet-router anycast address 2001:db8:: as soon as IPv6
  forwarding is on (every router): a "verified" connect from an address that
  never sent anything.

Nothing that arrives over ``lo`` is a probe from another host, so the sensor
drops it (UDP in the kernel, TCP after the accept); see sensor/listeners.py.

The test: ``nobody`` in the victim namespace (setpriv) sends both forgeries; then
the attacker next door probes the same ports for real.  The real probe is
reported and banned by a real fail2ban-server (the positive control: the path
from the tripwires to the nft set works, and fail2ban has read every entry before
it); the forged sources appear in no alert and no ban.
"""

from __future__ import annotations

import json
import pwd
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from f2b import Fail2Ban
from lab import ATTACKER6, SYSTEM_PYTHON, VICTIM6, Journal, Lab, SensorProcess, world_readable_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FORGED_UDP = "2001:db8:ffff::77"   # any address: only the datagram's source is forged
FORGED_TCP = "2001:db8::"          # the subnet-router anycast of the victim's 2001:db8::/64
TCP_PORTS = (79, 111)
UDP_PORTS = (69, 161)

SENSOR_CONF = f"""\
TCP_MODE="tcp"
UDP_MODE="udp"
TCP_PORTS="{",".join(map(str, TCP_PORTS))}"
UDP_PORTS="{",".join(map(str, UDP_PORTS))}"
SCAN_TRIGGER="0"
SCAN_WINDOW="300"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="10"
LOG_TARGET="journal"
"""

# Run as nobody: each forgery, and whether the kernel let it through (sent / connected).
FORGE = f"""
import json, socket
IPV6_FREEBIND = 78  # linux/in6.h
done = {{}}
def sock(kind, src):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    s.settimeout(3)
    s.bind((src, 0))
    return s
for dst in ("::1", "{VICTIM6}"):
    for port in {UDP_PORTS!r}:
        with sock(socket.SOCK_DGRAM, "{FORGED_UDP}") as s:
            try:
                s.sendto(b"forged", (dst, port)); done[f"udp {{dst}} {{port}}"] = "sent"
            except OSError as exc:
                done[f"udp {{dst}} {{port}}"] = str(exc)
for dst, port in (("{VICTIM6}", {TCP_PORTS[0]}), ("::1", {TCP_PORTS[1]})):
    with sock(socket.SOCK_STREAM, "{FORGED_TCP}") as s:
        try:
            s.connect((dst, port)); done[f"tcp {{dst}} {{port}}"] = "connected"
        except OSError as exc:
            done[f"tcp {{dst}} {{port}}"] = str(exc)
print(json.dumps(done))
"""

# Run in the attacker namespace: one real UDP probe and one real connect.
PROBE = f"""
import socket
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
    s.sendto(b"probe", ("{VICTIM6}", {UDP_PORTS[0]}))
socket.create_connection(("{VICTIM6}", {TCP_PORTS[0]}), timeout=5).close()
"""

FORWARDING_ON = "open('/proc/sys/net/ipv6/conf/all/forwarding', 'w').write('1')"


@dataclass
class Stack:
    """The lab with a sensor and fail2ban in the victim."""

    lab: Lab
    sensor: SensorProcess
    f2b: Fail2Ban


@pytest.fixture(scope="module")
def stack(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Stack]:
    """Victim (a router: IPv6 forwarding on) with the sensor in bound modes and fail2ban."""
    with Lab("pslofg") as lab:
        lab.run_victim([SYSTEM_PYTHON, "-c", FORWARDING_ON], check=True)  # this namespace only
        sensor = SensorProcess(lab, SENSOR_CONF, user=sensor_user).start()
        workdir = world_readable_dir("portsentry-f2blo-")
        local = (f"[portsentry]\njournalmatch = _UID={sensor_user[1]} _PID={sensor.pid}\n"
                 "bantime = 600\nfindtime = 600\n")
        f2b = Fail2Ban(lab, workdir, local)
        try:
            f2b.start()
            yield Stack(lab, sensor, f2b)
        finally:
            f2b.stop()
            sensor.close()
            shutil.rmtree(workdir, ignore_errors=True)


def test_forged_sources_over_loopback_are_neither_reported_nor_banned(stack: Stack, journald: Journal) -> None:
    lab, sensor, f2b = stack.lab, stack.sensor, stack.f2b
    nobody = pwd.getpwnam("nobody")
    cursor = journald.cursor()

    forged = lab.run_victim(["setpriv", "--reuid", str(nobody.pw_uid), "--regid", str(nobody.pw_gid),
                             "--clear-groups", SYSTEM_PYTHON, "-c", FORGE], timeout=60)
    assert forged.returncode == 0, forged.stderr
    done = json.loads(forged.stdout)
    # The attack is real: the kernel accepted every forged datagram and completed every forged handshake.
    assert all(v == "sent" for k, v in done.items() if k.startswith("udp")), done
    assert all(v == "connected" for k, v in done.items() if k.startswith("tcp")), done

    # Positive control: a real probe from the attacker is reported and banned.
    probe = lab.run_attacker([SYSTEM_PYTHON, "-c", PROBE], timeout=30)
    assert probe.returncode == 0, probe.stderr
    f2b.wait_in_set(ATTACKER6, timeout=20)
    reported = sensor.alerts(journald, cursor, src=ATTACKER6)
    assert {e["PORTSENTRY_PROTO"] for e in reported} >= {"udp", "tcp"}, [e["MESSAGE"] for e in reported]
    time.sleep(2.5)  # past SUMMARY_INTERVAL: a summary for a forged source would be out too

    sources = {e["PORTSENTRY_SRC"] for e in sensor.alerts(journald, cursor)}
    assert sources == {ATTACKER6}, sources
    banned = f2b.nft_set(6)
    log = f2b.log_text()
    for address in (FORGED_UDP, FORGED_TCP):
        assert address not in banned, banned
        assert f"Found {address} " not in log  # "Found 2001:db8:: -", not 2001:db8::2
        assert address not in f2b.banned()
    assert sensor.running(), sensor.stderr_text()
