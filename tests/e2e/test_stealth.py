"""The user's story for stealth/advanced detection (issue 3, "Done when" 2).

An admin runs the shipped default, TCP_MODE="atcp" and UDP_MODE="audp", on a
victim host that also serves HTTP.  Attackers on the same link scan it with
nmap's raw-packet scans, which never complete a connection and so are never
seen by bound sockets: SYN, FIN, NULL, XMAS, UDP and SYN over IPv6.  Each
must appear in the journal with the right PORTSENTRY_SCAN/PORTSENTRY_PROTO and
verified=no; the web server's clients must never appear, even when the server
starts after the sensor; a full 65535-port SYN scan must give a first alert
and at most SUMMARY_MAX_LINES summaries more per window.  Every "no alert"
check comes after a positive control: a known-good scanner hits the same
sockets afterwards and is seen to be counted in full (see control()).

Every scan type comes from its own attacker namespace (its own source
address), so the per-source summarising never hides a first alert.  The
whole module runs twice: ADVANCED_PORTS_* = 1024 (PortSentry's default) and
65535.  Alerts are selected by the sensor's _PID.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
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
    first_alerts,
    kill_pid,
    max_count,
    nmap_ports,
    poll_alerts,
    positive_control,
)

sys.path.insert(0, str(REPO_ROOT))
from sensor.alert import MESSAGE_ID
from sensor.raw.capture import RELEASE_GRACE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SUMMARY_MAX_LINES = 3
SCAN_WINDOW = 20       # longer than any one scan here; short enough to wait for its end
EARLY_SERVICE = 880    # a web server running before the sensor starts
LATE_SERVICE = 990     # a web server started while the sensor runs
SCANNED = (21, 22, 23, 25, 113, 135, 445, 1000, 40000)   # 113: in ADVANCED_EXCLUDE_TCP
UDP_SCANNED = (53, 69, 137, 161, 1000, 40000)            # 137: in ADVANCED_EXCLUDE_UDP

# name -> (nmap scan option(s), attacker suffix, IPv4 source, IPv6 source, target, proto, scan)
SCANS: dict[str, tuple[list[str], str, str, str, str, str, str]] = {
    "syn": (["-sS"], "s", "192.0.2.11", "2001:db8::11", VICTIM4, "tcp", "syn"),
    "fin": (["-sF"], "f", "192.0.2.12", "2001:db8::12", VICTIM4, "tcp", "fin"),
    "null": (["-sN"], "n", "192.0.2.13", "2001:db8::13", VICTIM4, "tcp", "null"),
    "xmas": (["-sX"], "x", "192.0.2.14", "2001:db8::14", VICTIM4, "tcp", "xmas"),
    "udp": (["-sU"], "u", "192.0.2.15", "2001:db8::15", VICTIM4, "udp", "udp"),
    "syn6": (["-6", "-sS"], "6", "192.0.2.16", "2001:db8::16", VICTIM6, "tcp", "syn"),
    "finurg": (["--scanflags", "URGFIN"], "k", "192.0.2.17", "2001:db8::17", VICTIM4, "tcp", "unknown"),
    # Fragmented probes: the kernel reassembles before a raw IP socket sees them.
    "synfrag": (["-sS", "-f"], "g", "192.0.2.18", "2001:db8::18", VICTIM4, "tcp", "syn"),
    "udp6": (["-6", "-sU"], "w", "192.0.2.19", "2001:db8::19", VICTIM6, "udp", "udp"),
}
FULL4, FULL6 = "192.0.2.20", "2001:db8::20"
ACK4, ACK6 = "192.0.2.21", "2001:db8::21"          # ACK-family scans: never a probe
RETURN4, RETURN6 = "192.0.2.22", "2001:db8::22"    # probes a service's port after it stopped
STEALTH4, STEALTH6 = "192.0.2.23", "2001:db8::23"  # scans a stcp/sudp sensor
# Positive controls: one known-good scanner per "nothing happened" check (a fresh source each,
# so that its count starts from zero), suffix -> (IPv4, IPv6).
CONTROLS = {f"c{n}": (f"192.0.2.{30 + n}", f"2001:db8::{30 + n:x}") for n in range(1, 6)}
CONTROL_TCP = (21, 23, 25)    # watched in both plans (<= 1024, not excluded, no service)
CONTROL_UDP = (53, 69)

CONF = """\
# portsentry-sensor e2e: advanced modes (the shipped default)
TCP_MODE="atcp"
UDP_MODE="audp"
ADVANCED_PORTS_TCP="{upper}"
ADVANCED_PORTS_UDP="{upper}"
SCAN_TRIGGER="0"
SCAN_WINDOW="{window}"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="{lines}"
PLAN_REFRESH="1"
LOG_TARGET="journal"
"""

# A legitimate client: N HTTP requests over IPv4 and IPv6, each a new connection.
CLIENT = """
import sys, urllib.request
port, count = int(sys.argv[1]), int(sys.argv[2])
for i in range(count):
    host = "192.0.2.1" if i % 2 else "[2001:db8::1]"
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=5) as reply:
        assert reply.status == 200
"""


def watched(upper: int, scanned: tuple[int, ...], excluded: tuple[int, ...]) -> set[int]:
    """Which of ``scanned`` the advanced plan watches (no service runs on them)."""
    return {p for p in scanned if p <= upper and p not in excluded}


# --------------------------------------------------------------------------
# Fixtures and helpers.

@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Victim with a web server, the client (first attacker) and one attacker per scan."""
    with Lab("ps3st") as the_lab:
        for _options, suffix, addr4, addr6, *_rest in SCANS.values():
            the_lab.add_attacker(suffix, addr4, addr6)
        the_lab.add_attacker("full", FULL4, FULL6)
        the_lab.add_attacker("ack", ACK4, ACK6)
        the_lab.add_attacker("ret", RETURN4, RETURN6)
        the_lab.add_attacker("st", STEALTH4, STEALTH6)
        for suffix, (addr4, addr6) in CONTROLS.items():
            the_lab.add_attacker(suffix, addr4, addr6)
        the_lab.serve_tcp(EARLY_SERVICE)
        yield the_lab


@pytest.fixture(scope="module", params=[1024, 65535], ids=["upper1024", "upper65535"])
def sensor(request: pytest.FixtureRequest, lab: Lab, journald: Journal,
           sensor_user: tuple[str, int, int]) -> Iterator[SensorProcess]:
    """The sensor in atcp+audp mode with ADVANCED_PORTS_* = the parameter."""
    conf = CONF.format(upper=request.param, lines=SUMMARY_MAX_LINES, window=SCAN_WINDOW)
    process = SensorProcess(lab, conf, user=sensor_user)
    process.upper = request.param  # type: ignore[attr-defined]
    process.cursor = journald.cursor()  # type: ignore[attr-defined]
    process.start()
    yield process
    try:
        code = process.proc.returncode if process.proc else None
        assert process.running(), f"sensor exited ({code}) during the tests:\n{process.stderr_text()}"
        assert "Traceback" not in process.stderr_text(), process.stderr_text()
    finally:
        process.close()


def alerts(journal: Journal, sensor: SensorProcess, **match: str) -> list[dict[str, Any]]:
    """This sensor's attack alerts since it started, matching PORTSENTRY_<KEY>=value."""
    assert sensor.proc is not None
    wanted = {f"PORTSENTRY_{k.upper()}": v for k, v in match.items()}
    return [e for e in journal.entries(sensor.cursor, _PID=str(sensor.proc.pid))  # type: ignore[attr-defined]
            if e.get("MESSAGE_ID") == MESSAGE_ID and all(e.get(k) == v for k, v in wanted.items())]


def wait_alerts(journal: Journal, sensor: SensorProcess, until: Callable[[list[dict[str, Any]]], bool],
                timeout: float = 15, **match: str) -> list[dict[str, Any]]:
    """Poll until ``until(alerts)`` holds; assert it did; return the alerts."""
    return poll_alerts(lambda: alerts(journal, sensor, **match), until, timeout, sensor, str(match))


def control(lab: Lab, journal: Journal, sensor: SensorProcess, suffix: str, tcp6: bool = True,
            udp: bool = False) -> None:
    """Positive control from attacker ``suffix``: a SYN scan over IPv4 (and IPv6), a UDP scan if asked.

    It reaches the same raw sockets as the traffic just before it, after it: once the
    sensor has counted all of it, that traffic has been handled too (see lab.positive_control).
    """
    addr4, addr6 = CONTROLS[suffix]
    ns = f"{lab.prefix}-{suffix}"
    cursor: str = sensor.cursor  # type: ignore[attr-defined]
    runs = [(["-sS"], VICTIM4, addr4, "tcp", CONTROL_TCP)]
    if tcp6:
        runs.append((["-6", "-sS"], VICTIM6, addr6, "tcp", CONTROL_TCP))
    if udp:
        runs += [(["-sU"], VICTIM4, addr4, "udp", CONTROL_UDP), (["-6", "-sU"], VICTIM6, addr6, "udp", CONTROL_UDP)]
    for options, target, src, proto, ports in runs:
        positive_control(lab, journal, sensor, cursor, ns, [*options, "-p", nmap_ports(ports), target],
                         src, proto, len(ports))


# --------------------------------------------------------------------------
# Every raw scan type, IPv4 and IPv6.

@pytest.mark.parametrize("name", list(SCANS))
def test_each_raw_scan_type_is_reported(name: str, lab: Lab, journald: Journal,
                                        sensor: SensorProcess) -> None:
    """nmap -sS/-sF/-sN/-sX/-sU and -6 -sS: scan=, proto=, mode=, verified=no; only watched ports."""
    options, suffix, addr4, addr6, target, proto, scan = SCANS[name]
    upper: int = sensor.upper  # type: ignore[attr-defined]
    scanned = UDP_SCANNED if proto == "udp" else SCANNED
    expected = watched(upper, scanned, (137,) if proto == "udp" else (113,))
    src = addr6 if target == VICTIM6 else addr4
    result = lab.nmap([*options, "-p", nmap_ports(scanned), target], ns=f"{lab.prefix}-{suffix}")
    assert result.returncode == 0, result.stderr

    found = wait_alerts(journald, sensor, lambda f: max_count(f) >= len(expected), src=src)
    first = first_alerts(found)
    assert len(first) == 1, [e["MESSAGE"] for e in found]
    assert first[0]["MESSAGE"].startswith(f"attackalert: src={src} dst={target} proto={proto} ")
    for entry in found:
        assert entry["PORTSENTRY_PROTO"] == proto
        assert entry["PORTSENTRY_SCAN"] == scan
        assert entry["PORTSENTRY_MODE"] == ("audp" if proto == "udp" else "atcp")
        assert entry["PORTSENTRY_VERIFIED"] == "no"
        assert entry["PORTSENTRY_DST"] == target
        assert int(entry["PORTSENTRY_DPORT"]) in expected
        if scan == "unknown":
            assert "TCP unknown-flags (FIN,URG) scan" in entry["MESSAGE"]
    assert max_count(found) == len(expected)


def test_ack_family_scans_are_not_probes(lab: Lab, journald: Journal, sensor: SensorProcess) -> None:
    """nmap -sA, -sW, -sM (ACK, window, FIN/ACK): established-looking traffic, dropped in the kernel."""
    for options in (["-sA"], ["-sW"], ["-sM"], ["-6", "-sA"]):
        target = VICTIM6 if "-6" in options else VICTIM4
        result = lab.nmap([*options, "-p", nmap_ports(SCANNED), target], ns=f"{lab.prefix}-ack")
        assert result.returncode == 0, result.stderr
    control(lab, journald, sensor, "c1")
    assert not alerts(journald, sensor, src=ACK4) + alerts(journald, sensor, src=ACK6)


# --------------------------------------------------------------------------
# Real services are never reported.

def run_client(lab: Lab, port: int, requests: int) -> None:
    """A legitimate client in the first attacker namespace (192.0.2.2 / 2001:db8::2)."""
    result = lab.run_attacker([SYSTEM_PYTHON, "-c", CLIENT, str(port), str(requests)], timeout=120)
    assert result.returncode == 0, result.stderr


def test_clients_of_a_running_web_server_are_never_reported(lab: Lab, journald: Journal,
                                                            sensor: SensorProcess) -> None:
    """200 HTTP requests (IPv4 and IPv6) to a service inside the watched range: no alert."""
    run_client(lab, EARLY_SERVICE, 200)
    control(lab, journald, sensor, "c2")
    assert not alerts(journald, sensor, src=ATTACKER4) + alerts(journald, sensor, src=ATTACKER6)
    assert not alerts(journald, sensor, dport=str(EARLY_SERVICE))


def test_a_web_server_started_after_the_sensor_is_never_reported(lab: Lab, journald: Journal,
                                                                 sensor: SensorProcess) -> None:
    """Clients hit the new server at once, before the next plan refresh: still no alert.

    When it stops, its port is watched again after RELEASE_GRACE seconds, not before.
    """
    server = lab.serve_tcp(LATE_SERVICE)
    try:
        run_client(lab, LATE_SERVICE, 40)
        time.sleep(2.5)   # > PLAN_REFRESH: the plan has dropped the port by now
        run_client(lab, LATE_SERVICE, 40)
        control(lab, journald, sensor, "c3")
    finally:
        kill_pid(server)
    assert not alerts(journald, sensor, src=ATTACKER4) + alerts(journald, sensor, src=ATTACKER6)
    assert not alerts(journald, sensor, dport=str(LATE_SERVICE))

    # A client retrying a service that just stopped (a restart, say) is not a scanner ...
    stopped = time.monotonic()
    time.sleep(2.5)   # > PLAN_REFRESH: the plan watches the port again
    lab.nmap(["-sS", "-p", str(LATE_SERVICE), VICTIM4], ns=f"{lab.prefix}-ret")
    control(lab, journald, sensor, "c4", tcp6=False)
    assert not alerts(journald, sensor, src=RETURN4)
    # ... but once RELEASE_GRACE has passed, a probe of that port is one.
    time.sleep(max(0.0, stopped + 1 + RELEASE_GRACE + 1 - time.monotonic()))
    lab.nmap(["-sS", "-p", str(LATE_SERVICE), VICTIM4], ns=f"{lab.prefix}-ret")
    found = wait_alerts(journald, sensor, lambda f: len(f) >= 1, src=RETURN4)
    assert found[0]["PORTSENTRY_DPORT"] == str(LATE_SERVICE)


ECHO_SERVER = """
import socket, threading
udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
udp.bind(("::", 5353))
tcp = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("::", 8443))
tcp.listen()
def serve_tcp():
    while True:
        conn, _ = tcp.accept()
        conn.sendall(conn.recv(100))
        conn.close()
threading.Thread(target=serve_tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(100)
    udp.sendto(data, peer)
"""

OUTGOING_CLIENT = """
import socket
for i in range(30):
    host = "192.0.2.2" if i % 2 else "2001:db8::2"
    family = socket.AF_INET if i % 2 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as udp:   # a resolver-style connected socket
        udp.settimeout(5)
        udp.connect((host, 5353))
        udp.send(b"query")
        assert udp.recv(100) == b"query"
    with socket.socket(family, socket.SOCK_DGRAM) as udp:   # unconnected, sendto/recvfrom
        udp.settimeout(5)
        udp.sendto(b"query", (host, 5353))
        assert udp.recvfrom(100)[0] == b"query"
    with socket.create_connection((host, 8443), timeout=5) as tcp:
        tcp.sendall(b"hello")
        assert tcp.recv(100) == b"hello"
"""


def test_replies_to_the_victims_own_connections_are_not_scans(lab: Lab, journald: Journal,
                                                              sensor: SensorProcess) -> None:
    """The victim's UDP (connected or not) and TCP clients get answers on watched ephemeral ports."""
    server = lab.spawn_attacker([SYSTEM_PYTHON, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        result = lab.run_victim([SYSTEM_PYTHON, "-c", OUTGOING_CLIENT], timeout=120)
        assert result.returncode == 0, result.stderr
        control(lab, journald, sensor, "c5", udp=True)
    finally:
        kill_pid(server)
    assert not alerts(journald, sensor, src=ATTACKER4) + alerts(journald, sensor, src=ATTACKER6)


# --------------------------------------------------------------------------
# A full scan is reported, in a bounded number of lines.

def test_a_full_syn_scan_is_reported_in_a_bounded_number_of_lines(
        lab: Lab, journald: Journal, sensor: SensorProcess) -> None:
    """nmap -sS -p 1-65535: a first alert, then at most SUMMARY_MAX_LINES summaries per window.

    How soon the first alert comes and how many of the ports the last line counts are
    figures, not claims: bench/run.py records them (sections latency and lines).
    """
    upper: int = sensor.upper  # type: ignore[attr-defined]
    ns = f"{lab.prefix}-full"
    started = time.monotonic()
    scan = lab.spawn_in(ns, ["nmap", "-n", "-Pn", "-sS", "-T4", "--max-retries", "1",
                             "--host-timeout", "200s", "-p", "1-65535", VICTIM4],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_alerts(journald, sensor, lambda f: len(f) >= 1, timeout=60, src=FULL4)
    out, err = scan.communicate(timeout=220)
    assert scan.returncode == 0, err
    scan_seconds = time.monotonic() - started

    # The source comes back once its (last) window is over: the return is a new first alert,
    # written after the old window's closing line -- so every line of the scan is out by then.
    newest = max(int(e["__REALTIME_TIMESTAMP"]) for e in first_alerts(alerts(journald, sensor, src=FULL4)))
    time.sleep(max(0.0, newest / 1e6 + SCAN_WINDOW + 1.5 - time.time()))
    windows = len(first_alerts(alerts(journald, sensor, src=FULL4)))
    lab.nmap(["-sS", "-p", nmap_ports(CONTROL_TCP), VICTIM4], ns=ns)
    found = wait_alerts(journald, sensor, lambda f: len(first_alerts(f)) > windows, src=FULL4)
    returned = found.index(first_alerts(found)[-1])
    found, again = found[:returned], found[returned:]
    assert int(again[0]["PORTSENTRY_COUNT"]) == 1 and int(again[0]["PORTSENTRY_DPORT"]) in CONTROL_TCP

    lines = [e["MESSAGE"] for e in found]
    starts = [i for i, e in enumerate(found) if e.get("PORTSENTRY_SUMMARY") != "1"] + [len(found)]
    assert starts[0] == 0 and len(starts) - 1 <= 1 + int(scan_seconds // SCAN_WINDOW), lines
    for begin, end in itertools.pairwise(starts):
        counts = [int(e["PORTSENTRY_COUNT"]) for e in found[begin:end]]
        assert len(counts) <= 1 + SUMMARY_MAX_LINES, lines          # bounded, whatever the scan's size
        assert counts == sorted(counts) and counts[0] == 1, lines
    assert all(int(e["PORTSENTRY_DPORT"]) <= upper for e in found), lines
    print(f"full scan ({upper}): {scan_seconds:.1f} s, {len(found)} journal lines in {len(starts) - 1} "
          f"window(s), last count {found[-1]['PORTSENTRY_COUNT']}")


# --------------------------------------------------------------------------
# Stealth modes: the configured lists only.

STEALTH_CONF = """\
TCP_MODE="stcp"
UDP_MODE="sudp"
TCP_PORTS="1,79,135,{early},31337"
UDP_PORTS="161,31337"
SCAN_TRIGGER="0"
SUMMARY_INTERVAL="1"
PLAN_REFRESH="1"
LOG_TARGET="journal"
"""


def test_stealth_modes_watch_the_configured_ports_only(lab: Lab, journald: Journal,
                                                       sensor_user: tuple[str, int, int]) -> None:
    """stcp/sudp: SYN and UDP probes of TCP_PORTS/UDP_PORTS (minus the web server) and nothing else."""
    stealth = SensorProcess(lab, STEALTH_CONF.format(early=EARLY_SERVICE), user=sensor_user)
    stealth.cursor = journald.cursor()  # type: ignore[attr-defined]
    try:
        stealth.start()
        ns = f"{lab.prefix}-st"
        lab.nmap(["-sS", "-p", f"1,79,135,136,{EARLY_SERVICE},31337,31338", VICTIM4], ns=ns)
        lab.nmap(["-sU", "-p", "161,162,31337", VICTIM4], ns=ns)
        tcp = wait_alerts(journald, stealth, lambda f: max_count(f) >= 4, src=STEALTH4, proto="tcp")
        udp = wait_alerts(journald, stealth, lambda f: max_count(f) >= 2, src=STEALTH4, proto="udp")
        # Positive control (before "and nothing else"): another scanner on the same sockets, counted in full.
        addr4, _ = CONTROLS["c1"]
        for options, ports, proto in ((["-sS"], "1,79", "tcp"), (["-sU"], "161,31337", "udp")):
            positive_control(lab, journald, stealth, stealth.cursor,  # type: ignore[attr-defined]
                             f"{lab.prefix}-c1", [*options, "-p", ports, VICTIM4], addr4, proto, 2)
        tcp, udp = alerts(journald, stealth, src=STEALTH4, proto="tcp"), alerts(journald, stealth,
                                                                              src=STEALTH4, proto="udp")
        assert {e["PORTSENTRY_MODE"] for e in tcp} == {"stcp"} and max_count(tcp) == 4
        assert {e["PORTSENTRY_MODE"] for e in udp} == {"sudp"} and max_count(udp) == 2
        assert {int(e["PORTSENTRY_DPORT"]) for e in tcp} <= {1, 79, 135, 31337}
        assert {int(e["PORTSENTRY_DPORT"]) for e in udp} <= {161, 31337}
        assert stealth.running(), stealth.stderr_text()
    finally:
        stealth.close()
