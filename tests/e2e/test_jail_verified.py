"""mode = verified: only alerts from completed TCP handshakes ban (issue 4, the filter's mode).

The sensor watches TCP in bound mode (a connect scan completes the handshake:
verified=yes) and UDP in stealth mode (raw packets, source unproven:
verified=no).  With `mode = verified` in the .local, a UDP scan is reported but
bans nobody (a forged source could otherwise get a third party banned); a TCP
connect scan bans.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from f2b import Fail2Ban
from lab import ATTACKER4, VICTIM4, Journal, Lab, SensorProcess, wait_until, world_readable_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

SECOND4, SECOND6 = "192.0.2.3", "2001:db8::3"  # the positive control's scanner

SENSOR_CONF = """\
TCP_MODE="tcp"
UDP_MODE="sudp"
TCP_PORTS="79,111"
UDP_PORTS="69,161"
SCAN_TRIGGER="0"
SCAN_WINDOW="1"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="10"
LOG_TARGET="journal"
"""


@pytest.fixture(scope="module")
def verified(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[tuple[Lab, SensorProcess, Fail2Ban]]:
    """Sensor (tcp + sudp) and fail2ban with mode = verified in the victim."""
    with Lab("psjver") as lab:
        lab.add_attacker("b", SECOND4, SECOND6)
        sensor = SensorProcess(lab, SENSOR_CONF, user=sensor_user).start()
        workdir = world_readable_dir("portsentry-f2bver-")
        local = (f"[portsentry]\njournalmatch = _UID={sensor_user[1]} _PID={sensor.pid}\n"
                 "mode = verified\nbantime = 30\n")
        f2b = Fail2Ban(lab, workdir, local)
        try:
            f2b.start()
            yield lab, sensor, f2b
        finally:
            f2b.stop()
            sensor.close()
            shutil.rmtree(workdir, ignore_errors=True)


def test_unverified_udp_scan_is_reported_but_bans_nobody(
        verified: tuple[Lab, SensorProcess, Fail2Ban], journald: Journal) -> None:
    lab, sensor, f2b = verified
    cursor = journald.cursor()
    lab.nmap(["-sU", "-p", "69,161", VICTIM4], timeout=60)
    assert wait_until(lambda: bool(sensor.alerts(journald, cursor, src=ATTACKER4, verified="no")), 15), \
        f"no unverified UDP alert; sensor stderr:\n{sensor.stderr_text()}"
    # Positive control: a verified connect scan from another attacker, after the UDP alert, is
    # found and banned; fail2ban reads the journal in order, so it has read the UDP alert too.
    lab.nmap(["-sT", "-p", "79,111", VICTIM4], ns=f"{lab.prefix}-b", timeout=60)
    assert wait_until(lambda: f"Found {SECOND4}" in f2b.log_text(), 15), f2b.log_tail()
    f2b.wait_in_set(SECOND4)
    assert ATTACKER4 not in f2b.nft_set(4)
    assert f"Found {ATTACKER4}" not in f2b.log_text()


def test_verified_connect_scan_bans(verified: tuple[Lab, SensorProcess, Fail2Ban], journald: Journal) -> None:
    lab, sensor, f2b = verified
    cursor = journald.cursor()
    lab.nmap(["-sT", "-p", "79,111", VICTIM4], timeout=60)
    f2b.wait_in_set(ATTACKER4, timeout=15)
    assert sensor.alerts(journald, cursor, src=ATTACKER4, verified="yes")
