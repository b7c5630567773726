"""What a forged IPv6 source can cost a third party now (issue 14; README "Rotating IPv6 sources").

Raw-socket mode (``atcp``, verified=no) and ``mode = all``: two SYNs forged from two
addresses of someone else's 2001:db8:66::/64 (crafted packets from the attacker's
link, bench/netio.py) get that whole /64 banned; before, one forged SYN banned one
address.  The README says so, and says that ``mode = verified`` and the ignore list
are the limits (tests/unit/test_prefixwatch.py, tests/e2e/test_prefix_rotation.py).
"""

from __future__ import annotations

import shutil

import pytest
from f2b import TABLE, Fail2Ban
from lab import (
    ATTACKER6,
    REPO_ROOT,
    SYSTEM_PYTHON,
    VICTIM6,
    Journal,
    Lab,
    SensorProcess,
    wait_until,
    world_readable_dir,
)
from test_jail_ban import jail_local

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

FORGED_NET = "2001:db8:66::/64"
FORGED = ("2001:db8:66::a", "2001:db8:66::b")

SENSOR_CONF = """\
# portsentry-sensor e2e: forged IPv6 sources of one /64
TCP_MODE="atcp"
UDP_MODE="off"
ADVANCED_PORTS_TCP="1024"
SCAN_TRIGGER="0"
IPV6_PREFIX="64"
LOG_TARGET="journal"
"""

INJECT = """
import sys
sys.path.insert(0, sys.argv[1])
from netio import Injector, packet
injector = Injector(None, sys.argv[2])
for i, src in enumerate(sys.argv[4:]):
    injector.send(*packet(src, sys.argv[3], 111 + 32 * i))
injector.close()
"""


def test_two_forged_syns_from_a_64_ban_that_64_in_mode_all(journald: Journal,
                                                            sensor_user: tuple[str, int, int]) -> None:
    workdir = world_readable_dir("portsentry-f2b-")
    try:
        with Lab("psprxf") as lab:
            # Replies to the forged sources go back to the attacker's link (which drops them).
            lab.run_victim(["ip", "-6", "route", "add", FORGED_NET, "via", ATTACKER6], check=True)
            mac = lab.run_victim(["cat", "/sys/class/net/eth0/address"], check=True).stdout.strip()
            sensor = SensorProcess(lab, SENSOR_CONF, user=sensor_user).start()
            f2b = Fail2Ban(lab, workdir, jail_local(sensor_user[1], sensor.pid, "banaction = portsentry-nft.py\n"))
            try:
                f2b.start()
                f2b.client("set", "portsentry", "bantime", "600")
                cursor = journald.cursor()
                lab.run_attacker([SYSTEM_PYTHON, "-c", INJECT, str(REPO_ROOT / "bench"), mac, VICTIM6, *FORGED],
                                 check=True)

                def in_set() -> bool:
                    out = lab.run_victim(["nft", "list", "set", *TABLE, "net6-set-portsentry"]).stdout
                    return FORGED_NET in out
                assert wait_until(in_set, 15, step=0.1), f2b.log_tail()
                alerts = sensor.alerts(journald, cursor)
                assert [a.get("PORTSENTRY_NET") for a in alerts] == [None, FORGED_NET], \
                    [a["MESSAGE"] for a in alerts]
                assert all(a["PORTSENTRY_VERIFIED"] == "no" for a in alerts)
            finally:
                f2b.stop()
                sensor.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
