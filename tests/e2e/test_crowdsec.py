"""The CrowdSec pack on a two-server fleet: a scan of host A blocks the scanner on host B too.

Real Debian crowdsec and crowdsec-firewall-bouncer (tests/e2e/crowdsec.py: private
config and data dirs, Central API off).  Host A (the lab's victim, 192.0.2.1) runs
the Local API, an agent, the sensor and the nftables bouncer; host B (192.0.2.3, on
the same link) runs an agent registered to A's LAPI, its own sensor and bouncer.
The scanner (pscs-s, 192.0.2.4) scans A only; a bystander (pscs-o, 192.0.2.5) never
scans A.  (B, the scanner and the bystander are macvlan namespaces on the lab's link:
they reach each other and A, but not the lab's first attacker, the macvlans' parent.)

The lab has one journald for every namespace, so each host's acquisition must read
only its own sensor: it matches ``_UID=`` (the sensor's user) and ``_PID=`` (that
host's sensor process), both set by journald itself.  On a real server the shipped
``_SYSTEMD_UNIT=portsentry-sensor.service`` does the same job.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from lab import ATTACKER4, VICTIM4, Journal, Lab, SensorProcess, wait_until, world_readable_dir

from crowdsec import FLEET_SENSOR_CONF, HOST_B4, PACK, CrowdSecHost, Fleet, journal_match
from crowdsec import fleet as start_fleet

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SCANNER4, SCANNER6 = "192.0.2.4", "2001:db8::4"
OTHER4, OTHER6 = "192.0.2.5", "2001:db8::5"
FORGED = "198.51.100.66"


@pytest.fixture(scope="module")
def fleet(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Fleet]:
    with Lab("pscs") as lab:
        lab.add_attacker("s", SCANNER4, SCANNER6)
        lab.add_attacker("o", OTHER4, OTHER6)
        with start_fleet(lab, sensor_user) as started:
            yield started


def test_both_agents_pass_crowdsecs_config_test(fleet: Fleet) -> None:
    """``crowdsec -t`` accepts each host's configuration with the pack's parser and scenario."""
    for host in (fleet.a, fleet.b):
        result = host.check()
        assert result.returncode == 0, result.stdout + result.stderr
    log = fleet.a.log_text()
    assert "portsentry-sensor-logs.yaml" in log and "portsentry-sensor/portsentry-scan" in log


def test_a_scan_of_a_blocks_the_scanner_on_b_and_one_delete_lifts_it(fleet: Fleet) -> None:
    lab = fleet.lab
    assert fleet.connects("pscs-s"), "B's service is unreachable before any scan"
    start = time.monotonic()
    lab.nmap(["-sS", "-p", "20-30", "--max-retries", "0", VICTIM4], ns="pscs-s", timeout=60)
    assert wait_until(lambda: SCANNER4 in fleet.a.banned(), 15), \
        f"no decision on A's LAPI:\n{fleet.a.log_text()[-3000:]}"
    decision = fleet.a.banned()[SCANNER4]
    assert parse_hours(decision) <= 10 / 60, f"the first rung is 10 minutes, got {decision}"
    assert wait_until(lambda: not fleet.connects("pscs-s"), 15, 0.2), \
        f"B still lets the scanner in:\n{fleet.b.bouncer_log()[-2000:]}"
    blocked_after = time.monotonic() - start
    assert SCANNER4 in lab.run_in(fleet.host_b, ["nft", "list", "set", "ip", "crowdsec",
                                                 "crowdsec-blacklists"]).stdout
    assert fleet.connects("pscs-o"), "B blocks a host that never scanned"
    print(f"scan of A -> blocked on B after {blocked_after:.1f} s")

    fleet.a.cscli("decisions", "delete", "--ip", SCANNER4)
    assert wait_until(lambda: fleet.connects("pscs-s"), 15, 0.2), \
        "B still blocks the scanner after cscli decisions delete on A"


def test_a_forged_logger_line_on_b_bans_nobody(fleet: Fleet) -> None:
    """``logger`` as nobody on B writes a perfect alert line naming FORGED; B's agent ignores it."""
    lab = fleet.lab
    forged = (f"attackalert: src={FORGED} dst={HOST_B4} proto=tcp dport=23 scan=syn mode=atcp "
              f"verified=no count=1 TCP SYN scan from host {FORGED} to TCP port 23")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    lab.run_in(fleet.host_b, [*as_nobody, "logger", "-t", "portsentry-sensor", forged], check=True)
    # Positive control, after the forged line: a real scan of B from another address is banned.
    lab.nmap(["-sS", "-p", "40-45", "--max-retries", "0", HOST_B4], ns="pscs-o", timeout=60)
    assert wait_until(lambda: OTHER4 in fleet.a.banned(), 15), \
        f"the real scan of B was not banned:\n{fleet.b.log_text()[-3000:]}"
    assert FORGED not in fleet.a.banned()
    assert not [a for a in fleet.a.alerts() if a.get("source", {}).get("ip") == FORGED]
    fleet.a.cscli("decisions", "delete", "--ip", OTHER4)


def test_the_shipped_acquisition_trusts_only_the_sensors_unit() -> None:
    """The shipped file matches on _SYSTEMD_UNIT (set by journald), never a forgeable field."""
    text = (PACK / "acquis.d/portsentry-sensor.yaml").read_text()
    active = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "  - _SYSTEMD_UNIT=portsentry-sensor.service" in active
    assert not [line for line in active if "SYSLOG_IDENTIFIER" in line or "_COMM" in line]


def test_the_ladder_profile_escalates(journald: Journal, sensor_user: tuple[str, int, int]) -> None:
    """Repeated scans of one address: 10 m, then 1 h, then 6 h, then a year (the jail's ladder).

    The scenario here is the shipped one with a 1 s blackhole (shipped: 10 m) so that four scans
    in a row each raise an alert; the profile is the shipped one.
    """
    with Lab("pscl") as lab:
        sensor = SensorProcess(lab, FLEET_SENSOR_CONF.replace('SCAN_TRIGGER="0"', 'SCAN_TRIGGER="0"\nSCAN_WINDOW="1"'),
                               user=sensor_user).start()
        work = world_readable_dir("portsentry-crowdsec-")
        host = CrowdSecHost(lab, lab.victim, work, VICTIM4, journal_match(sensor_user, sensor))
        scenario = host.etc / "scenarios" / "portsentry-scan.yaml"
        scenario.write_text(scenario.read_text().replace("blackhole: 10m", "blackhole: 1s"))
        try:
            host.register(host)
            host.start()
            durations = []
            for rung in range(4):
                lab.nmap(["-sS", "-p", str(100 + rung), "--max-retries", "0", VICTIM4], timeout=60)
                assert wait_until(lambda r=rung: len(decisions_of(host, ATTACKER4)) > r, 15), \
                    f"no decision #{rung + 1}:\n{host.log_text()[-1500:]}\n" \
                    f"{[e.get('MESSAGE') for e in sensor.entries(journald)][-8:]}\n{decisions_of(host, ATTACKER4)}"
                durations.append(decisions_of(host, ATTACKER4)[-1])
                time.sleep(2.5)  # past the sensor's 1 s window and the 1 s blackhole
            hours = [parse_hours(d) for d in durations]
            assert 0.15 < hours[0] <= 10 / 60 and 0.9 < hours[1] <= 1 and 5.9 < hours[2] <= 6, durations
            assert hours[3] > 8000, durations
        finally:
            host.stop()
            sensor.close()
            shutil.rmtree(work, ignore_errors=True)


def decisions_of(host: CrowdSecHost, address: str) -> list[str]:
    """Durations left of every decision for ``address``, oldest alert first (``cscli decisions list``
    shows only the newest decision of an address, so read the alerts)."""
    found = []
    for alert in sorted(host.alerts(), key=lambda a: a.get("id", 0)):
        for decision in alert.get("decisions") or []:
            if decision.get("value") == address:
                found.append(decision.get("duration", ""))
    return found


def parse_hours(duration: str) -> float:
    """Go's duration text (``9m58.3s``, ``5h59m``, ``8759h59m``) in hours."""
    hours = 0.0
    number = ""
    for char in duration:
        if char.isdigit() or char == ".":
            number += char
            continue
        scale = {"h": 1, "m": 1 / 60, "s": 1 / 3600}.get(char, 0)
        if char == "m" and number == "":
            continue
        hours += float(number or 0) * scale
        number = ""
    return hours


def test_harness_parse_hours() -> None:
    assert abs(parse_hours("9m58.5s") - (9 / 60 + 58.5 / 3600)) < 1e-9
    assert parse_hours("5h59m1s") > 5.98
    assert parse_hours("8759h59m59.9s") > 8759

