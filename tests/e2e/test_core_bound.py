"""The user's story for the bound modes (issue 2, "Done when" 2 and 3).

An admin runs the sensor with TCP_MODE="tcp" and UDP_MODE="udp" on a victim
host; an attacker on the same link scans it with nmap.  Every scan must show
up in the journal as attackalert events with the PORTSENTRY_* fields fail2ban
relies on; ignored sources, the host's own traffic and real services must
never show up; a broken configuration must never take the sensor down.

Runs in network namespaces (tests/e2e/lab.py): victim 192.0.2.1/2001:db8::1,
attacker 192.0.2.2/2001:db8::2, a second attacker 192.0.2.3/2001:db8::3.
Alerts are selected by the sensor's _PID (set by journald, and unique even
when other test sessions log alerts for the same documentation addresses).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
    max_count,
    nmap_ports,
    poll_alerts,
    positive_control,
    world_readable_dir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECOND4, SECOND6 = "192.0.2.3", "2001:db8::3"
TCP_WATCHED = (1, 79, 111, 143, 1080, 31337)
UDP_WATCHED = (7, 69, 161, 31337)
SERVICE_PORT = 8080  # a real service on the victim, not in TCP_PORTS

BASE_CONF = f"""\
# portsentry-sensor e2e: bound modes
TCP_MODE="tcp"
UDP_MODE="udp"
TCP_PORTS="{",".join(map(str, TCP_WATCHED))}"
UDP_PORTS="{",".join(map(str, UDP_WATCHED))}"
SCAN_TRIGGER="0"
SCAN_WINDOW="300"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="10"
LOG_TARGET="journal"
"""
# Line of TCP_PORTS in BASE_CONF, which the error messages must name.
TCP_PORTS_LINE = next(n for n, line in enumerate(BASE_CONF.splitlines(), 1) if line.startswith("TCP_PORTS="))

StartSensor = Callable[..., SensorProcess]


# --------------------------------------------------------------------------
# Fixtures and helpers.

@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """Victim, attacker and a second attacker; a real web server on the victim."""
    with Lab("pscore") as the_lab:
        the_lab.add_attacker("b", SECOND4, SECOND6)
        the_lab.serve_tcp(SERVICE_PORT)
        yield the_lab


@pytest.fixture
def start_sensor(lab: Lab, journald: Journal, sensor_user: tuple[str, int, int],
                 tmp_path: Path) -> Iterator[StartSensor]:
    """Factory: start a sensor in the victim (config and ignore text given); stopped at the end."""
    started: list[SensorProcess] = []

    def start(conf: str = BASE_CONF, ignore: str = "", wait_ready: bool = True) -> SensorProcess:
        sensor = SensorProcess(lab, conf, ignore, user=sensor_user, tmp_path=tmp_path)
        started.append(sensor)
        return sensor.start(wait_ready=wait_ready)

    yield start
    for sensor in started:
        sensor.close()


def alerts(journal: Journal, cursor: str, sensor: SensorProcess, **match: str) -> list[dict[str, Any]]:
    """This sensor's attack alerts after ``cursor`` matching PORTSENTRY_<KEY>=value."""
    return sensor.alerts(journal, cursor, **match)


def wait_alerts(journal: Journal, cursor: str, sensor: SensorProcess,
                until: Callable[[list[dict[str, Any]]], bool], timeout: float = 15,
                **match: str) -> list[dict[str, Any]]:
    """Poll this sensor's alerts until ``until(alerts)`` holds; return them (asserting it held)."""
    return poll_alerts(lambda: alerts(journal, cursor, sensor, **match), until, timeout, sensor, str(match))


def nmap_open(output: str, proto: str) -> set[int]:
    """Ports nmap reported as open (TCP) or open|filtered (UDP)."""
    result = set()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].endswith(f"/{proto}") and fields[1].startswith("open"):
            result.add(int(fields[0].split("/")[0]))
    return result


# --------------------------------------------------------------------------
# Detection.

def test_connect_scan_is_one_verified_alert_then_a_summary(
        lab: Lab, journald: Journal, start_sensor: StartSensor, sensor_user: tuple[str, int, int]) -> None:
    """nmap -sT of four watched ports: one immediate alert, summaries count all four."""
    sensor = start_sensor()
    cursor = journald.cursor()
    scanned = (1, 79, 111, 31337)
    out = lab.nmap(["-sT", "-p", nmap_ports(scanned), VICTIM4]).stdout
    assert nmap_open(out, "tcp") == set(scanned), out  # the tripwires accept connections

    found = wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= len(scanned),
                        src=ATTACKER4, proto="tcp")
    first = first_alerts(found)
    assert len(first) == 1, [e["MESSAGE"] for e in found]
    alert = first[0]
    assert alert["MESSAGE"].startswith(f"attackalert: src={ATTACKER4} dst={VICTIM4} proto=tcp ")
    assert alert["PORTSENTRY_DST"] == VICTIM4
    assert alert["PORTSENTRY_SCAN"] == "connect"
    assert alert["PORTSENTRY_VERIFIED"] == "yes"
    assert alert["PORTSENTRY_MODE"] == "tcp"
    assert alert["PORTSENTRY_COUNT"] == "1"
    assert int(alert["PORTSENTRY_DPORT"]) in scanned
    assert alert["SYSLOG_IDENTIFIER"] == "portsentry-sensor"
    assert alert["PRIORITY"] == "5"
    assert alert["_UID"] == str(sensor_user[1])  # the unprivileged user, as fail2ban's journalmatch expects
    assert max_count(found) == len(scanned)
    assert all(int(e["PORTSENTRY_DPORT"]) in scanned for e in found)


def test_udp_scan_is_reported_unverified(lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """nmap -sU of three watched UDP ports: scan=udp, verified=no, every port counted."""
    sensor = start_sensor()
    cursor = journald.cursor()
    scanned = (7, 69, 161)
    lab.nmap(["-sU", "-p", nmap_ports(scanned), VICTIM4])

    found = wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= len(scanned),
                        src=ATTACKER4, proto="udp")
    first = first_alerts(found)
    assert len(first) == 1, [e["MESSAGE"] for e in found]
    assert first[0]["MESSAGE"].startswith(f"attackalert: src={ATTACKER4} dst={VICTIM4} proto=udp ")
    for entry in found:
        assert entry["PORTSENTRY_SCAN"] == "udp"
        assert entry["PORTSENTRY_VERIFIED"] == "no"
        assert entry["PORTSENTRY_MODE"] == "udp"
        assert int(entry["PORTSENTRY_DPORT"]) in scanned
    assert not alerts(journald, cursor, sensor, proto="tcp")


def test_ipv6_connect_scan_is_reported(lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """nmap -6 -sT to 2001:db8::1: the alert names the IPv6 source."""
    sensor = start_sensor()
    cursor = journald.cursor()
    scanned = (79, 143, 1080)
    out = lab.nmap(["-6", "-sT", "-p", nmap_ports(scanned), VICTIM6]).stdout
    assert nmap_open(out, "tcp") == set(scanned), out

    found = wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= len(scanned),
                        src=ATTACKER6, proto="tcp")
    alert = first_alerts(found)[0]
    assert alert["MESSAGE"].startswith(f"attackalert: src={ATTACKER6} dst={VICTIM6} ")
    assert alert["PORTSENTRY_DST"] == VICTIM6
    assert alert["PORTSENTRY_VERIFIED"] == "yes"
    assert int(alert["PORTSENTRY_DPORT"]) in scanned


def test_ignored_source_produces_nothing(lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """192.0.2.3 (and its IPv6 /128) in the ignore file: its scans are silent, 192.0.2.2's are not."""
    sensor = start_sensor(ignore=f"# trusted scanner\n{SECOND4}\n{SECOND6}/128\n")
    cursor = journald.cursor()
    second = f"{lab.prefix}-b"
    out = lab.nmap(["-sT", "-p", nmap_ports(TCP_WATCHED), VICTIM4], ns=second).stdout
    assert nmap_open(out, "tcp") == set(TCP_WATCHED), out  # it did reach the tripwires
    lab.nmap(["-6", "-sT", "-p", nmap_ports(TCP_WATCHED), VICTIM6], ns=second)
    lab.nmap(["-sU", "-p", nmap_ports(UDP_WATCHED), VICTIM4], ns=second)

    # Positive control: the first attacker then hits every socket the ignored one did.
    control_all_sockets(lab, journald, cursor, sensor, TCP_WATCHED, UDP_WATCHED)
    for src in (SECOND4, SECOND6):
        assert alerts(journald, cursor, sensor, src=src) == []
    reported = {e["PORTSENTRY_SRC"] for e in alerts(journald, cursor, sensor)}
    assert reported == {ATTACKER4, ATTACKER6}


def control_all_sockets(lab: Lab, journal: Journal, cursor: str, sensor: SensorProcess,
                        tcp: tuple[int, ...], udp: tuple[int, ...], tcp4: bool = True) -> None:
    """Positive control from the first attacker: TCP over IPv4 (unless done already) and IPv6, UDP alike."""
    if tcp4:
        positive_control(lab, journal, sensor, cursor, lab.attacker,
                         ["-sT", "-p", nmap_ports(tcp), VICTIM4], ATTACKER4, "tcp", len(tcp))
    positive_control(lab, journal, sensor, cursor, lab.attacker,
                     ["-6", "-sT", "-p", nmap_ports(tcp), VICTIM6], ATTACKER6, "tcp", len(tcp))
    positive_control(lab, journal, sensor, cursor, lab.attacker, ["-sU", "-p", nmap_ports(udp), VICTIM4],
                     ATTACKER4, "udp", len(udp))
    positive_control(lab, journal, sensor, cursor, lab.attacker,
                     ["-6", "-sU", "-p", nmap_ports(udp), VICTIM6], ATTACKER6, "udp", len(udp))


def wait_ignore_reloaded(journal: Journal, sensor: SensorProcess, cursor: str, entries: int) -> None:
    """Wait for the sensor's own line saying it re-read the ignore file (it watches the file)."""
    said = f"ignore list reloaded from {sensor.ignore_path}: {entries} entries"
    found = journal.wait_for(cursor, lambda e: said in str(e.get("MESSAGE", "")), timeout=10,
                             _PID=str(sensor.pid))
    assert found, f"no '{said}' from the sensor; stderr:\n{sensor.stderr_text()}"


def test_editing_the_ignore_file_while_running_takes_effect(
        lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """No SIGHUP: ignore 192.0.2.3 while the sensor runs, its scans are silent; un-ignore, they alert."""
    sensor = start_sensor()
    second = f"{lab.prefix}-b"
    cursor = journald.cursor()
    sensor.write_ignore(f"{SECOND4}\n{SECOND6}/128\n")            # edited in place
    wait_ignore_reloaded(journald, sensor, cursor, 2)
    out = lab.nmap(["-sT", "-p", nmap_ports(TCP_WATCHED), VICTIM4], ns=second).stdout
    assert nmap_open(out, "tcp") == set(TCP_WATCHED), out          # it did reach the tripwires
    lab.nmap(["-6", "-sT", "-p", nmap_ports(TCP_WATCHED), VICTIM6], ns=second)
    lab.nmap(["-sU", "-p", nmap_ports(UDP_WATCHED), VICTIM4], ns=second)
    lab.nmap(["-6", "-sU", "-p", nmap_ports(UDP_WATCHED), VICTIM6], ns=second)
    control_all_sockets(lab, journald, cursor, sensor, TCP_WATCHED, UDP_WATCHED)
    assert alerts(journald, cursor, sensor, src=SECOND4) + alerts(journald, cursor, sensor, src=SECOND6) == []

    cursor = journald.cursor()
    replacement = sensor.ignore_path.with_name("portsentry.ignore.new")   # replaced, as editors do
    replacement.write_text("# nobody ignored any more\n")
    replacement.chmod(0o644)
    replacement.replace(sensor.ignore_path)
    wait_ignore_reloaded(journald, sensor, cursor, 0)
    lab.nmap(["-sT", "-p", "79,111", VICTIM4], ns=second)
    lab.nmap(["-6", "-sT", "-p", "79,111", VICTIM6], ns=second)
    for src in (SECOND4, SECOND6):
        found = wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= 2, src=src, proto="tcp")
        assert len(first_alerts(found)) == 1, [e["MESSAGE"] for e in found]


def test_real_service_and_own_traffic_are_never_reported(
        lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """A web server's port scanned with the tripwires is never an alert; the host's own connections neither."""
    sensor = start_sensor()
    cursor = journald.cursor()
    # The second attacker only talks to the real service: a client, not a scanner.
    only_service = lab.nmap(["-sT", "-p", str(SERVICE_PORT), VICTIM4], ns=f"{lab.prefix}-b").stdout
    assert nmap_open(only_service, "tcp") == {SERVICE_PORT}, only_service
    curl = lab.run_in(f"{lab.prefix}-b", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                                          f"http://{VICTIM4}:{SERVICE_PORT}/"], timeout=20)
    assert curl.stdout == "200", curl.stderr
    # The host itself touches its own tripwires (v4, v6, loopback).
    own = lab.run_victim([SYSTEM_PYTHON, "-c", OWN_TRAFFIC], timeout=20)
    assert own.returncode == 0, own.stderr
    # The first attacker scans the service's port together with watched ports: the positive
    # control for TCP over IPv4; then for every other socket the host's own traffic touched.
    mixed = (SERVICE_PORT, 1, 79, 111)
    out = lab.nmap(["-sT", "-p", nmap_ports(mixed), VICTIM4]).stdout
    assert nmap_open(out, "tcp") == set(mixed), out
    wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= 3, src=ATTACKER4, proto="tcp")
    control_all_sockets(lab, journald, cursor, sensor, (79, 111), (69, 161), tcp4=False)

    found = alerts(journald, cursor, sensor)
    assert all(e["PORTSENTRY_DPORT"] != str(SERVICE_PORT) for e in found), [e["MESSAGE"] for e in found]
    assert {e["PORTSENTRY_SRC"] for e in found} == {ATTACKER4, ATTACKER6}, [e["MESSAGE"] for e in found]
    assert max_count(alerts(journald, cursor, sensor, src=ATTACKER4, proto="tcp")) == 3


OWN_TRAFFIC = f"""
import socket
for family, addr in ((socket.AF_INET, "{VICTIM4}"), (socket.AF_INET, "127.0.0.1"),
                     (socket.AF_INET6, "{VICTIM6}"), (socket.AF_INET6, "::1")):
    for port in (79, 111):
        with socket.create_connection((addr, port), timeout=5):
            pass
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"x", (addr, 69))
"""


# --------------------------------------------------------------------------
# Configuration errors and the lifecycle.

def bad_port_conf() -> str:
    """BASE_CONF with port 70000 on the TCP_PORTS line, and without 111 and 143."""
    lines = BASE_CONF.splitlines()
    lines[TCP_PORTS_LINE - 1] = 'TCP_PORTS="1,79,70000"'
    return "\n".join(lines) + "\n"


def test_sighup_with_a_broken_config_keeps_the_old_one(
        lab: Lab, journald: Journal, start_sensor: StartSensor) -> None:
    """SIGHUP with TCP_PORTS="1,79,70000": the sensor says why, stays up, keeps watching 111 and 143."""
    sensor = start_sensor()
    cursor = journald.cursor()
    sensor.write_config(bad_port_conf())
    sensor.reload()
    where = f"{sensor.conf_path}:{TCP_PORTS_LINE}: TCP_PORTS"
    said = journald.wait_for(cursor, lambda e: where in str(e.get("MESSAGE", "")), timeout=10,
                             _PID=str(sensor.pid))
    assert said, f"no journal line names {where}; stderr:\n{sensor.stderr_text()}"
    assert len(said) == 1 and "\n" not in said[0]["MESSAGE"]
    assert "attackalert" not in said[0]["MESSAGE"]
    time.sleep(0.5)
    assert sensor.running(), sensor.stderr_text()
    assert "Traceback" not in sensor.stderr_text()

    out = lab.nmap(["-sT", "-p", "111,143", VICTIM4]).stdout
    assert nmap_open(out, "tcp") == {111, 143}, out  # still bound: nothing half-applied
    found = wait_alerts(journald, cursor, sensor, lambda f: max_count(f) >= 2, src=ATTACKER4, proto="tcp")
    assert {int(e["PORTSENTRY_DPORT"]) for e in found} <= {111, 143}

    # A good config is then taken on the next SIGHUP (so the check above was not vacuous).
    cursor = journald.cursor()
    sensor.write_config(BASE_CONF.replace(f'TCP_PORTS="{nmap_ports(TCP_WATCHED)}"', 'TCP_PORTS="1,79,5555"'))
    sensor.reload()
    assert lab_wait(lambda: lab.listening(lab.victim, "tcp", 5555), 10), sensor.stderr_text()
    assert lab_wait(lambda: not lab.listening(lab.victim, "tcp", 111), 10)
    lab.nmap(["-sT", "-p", "5555", VICTIM4], ns=f"{lab.prefix}-b")
    wait_alerts(journald, cursor, sensor, lambda f: len(f) >= 1, src=SECOND4, dport="5555")
    assert sensor.running()


def lab_wait(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll a condition for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_check_names_file_line_and_key_of_a_bad_port() -> None:
    """`sensor check` on TCP_PORTS="1,79,70000": one line FILE:LINE: TCP_PORTS: ..., exit 2."""
    workdir = world_readable_dir("portsentry-check-")
    try:
        conf = workdir / "portsentry.conf"
        conf.write_text(bad_port_conf() + f'IGNORE_FILE="{workdir}/none.ignore"\n')
        proc = subprocess.run([SYSTEM_PYTHON, "-m", "sensor", "check", "--config", str(conf)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO_ROOT)})
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    output = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2, output
    assert len(output) == 1, output
    assert f"{conf}:{TCP_PORTS_LINE}: TCP_PORTS:" in output[0]
    assert "70000" in output[0]
    assert "Traceback" not in proc.stderr


def test_run_with_a_bad_port_exits_2_before_listening(lab: Lab, start_sensor: StartSensor) -> None:
    """`sensor run` with a bad port: one error line naming file, line and key; exit 2; no READY=1."""
    sensor = start_sensor(conf=bad_port_conf(), wait_ready=False)
    assert sensor.proc is not None
    code = sensor.proc.wait(30)
    lines = sensor.stderr_text().strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and f"{sensor.conf_path}:{TCP_PORTS_LINE}: TCP_PORTS:" in lines[0], lines
    assert "READY=1" not in sensor.notifications
    assert not lab.listening(lab.victim, "tcp", 79)


def test_sigterm_exits_0_after_ready_and_status(lab: Lab, journald: Journal,
                                                start_sensor: StartSensor) -> None:
    """systemd's view: READY=1 and STATUS= while running, exit 0 on SIGTERM, sockets closed."""
    sensor = start_sensor()
    notes = sensor.notifications
    assert "READY=1" in notes
    status = [n for n in notes if n.startswith("STATUS=")]
    assert status and "tcp 6 ports" in status[0] and "udp 4 ports" in status[0], notes
    assert lab.listening(lab.victim, "tcp", 79) and lab.listening(lab.victim, "udp", 69)
    assert sensor.stop() == 0, sensor.stderr_text()
    assert "Traceback" not in sensor.stderr_text()
    assert not lab.listening(lab.victim, "tcp", 79)
    assert not lab.listening(lab.victim, "udp", 69)
