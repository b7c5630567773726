"""Issue 14 end to end: a scanner rotating over 50 addresses of one IPv6 /64 gets the /64 banned.

The attacker namespace holds 50 real addresses of 2001:db8:77::/64 (``ip addr add
... nodad``) plus a never-used one, and one of the neighbouring 2001:db8:78::/64; each
of the 50 completes one TCP connection to one watched port of the sensor (bound
``tcp`` mode: ``verified=yes``).  The sensor writes at most 3 alert lines, one of
them the prefix alert; a real fail2ban-server in the victim namespace with
``banaction = portsentry-nft.py`` (and again with ``portsentry-nftables``, the stock
shell action with prefix sets) bans ``2001:db8:77::/64`` as one entry (the
interval set net6-set-portsentry in the victim's real nftables); the never-used
address of that /64 is locked out, the neighbouring /64 is not; `status portsentry`
lists the prefix; `unbanip 2001:db8:77::/64` lets the never-used address in again;
the escalation ladder counts the prefix's bans.  A /64 that holds an address of the
sensor's ignore list is never banned as a prefix: its ignored address stays reachable.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from f2b import TABLE, Fail2Ban
from lab import (
    SYSTEM_PYTHON,
    VICTIM6,
    Journal,
    Lab,
    SensorProcess,
    wait_until,
    world_readable_dir,
)
from test_jail_ban import SERVICE_TCP, TCP_WATCHED, jail_local, recorded_bans

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

NET = "2001:db8:77::/64"
ROTATING = [f"2001:db8:77::{0x1000 + i:x}" for i in range(50)]
NEVER_SEEN = "2001:db8:77::beef"
NEIGHBOUR = "2001:db8:78::1"
IGNORED_NET = "2001:db8:79::/64"
IGNORED = "2001:db8:79::5"          # in the sensor's ignore list
ROTATING_IGNORED = [f"2001:db8:79::{0x1000 + i:x}" for i in range(10)]

SENSOR_CONF = f"""\
# portsentry-sensor e2e: rotating IPv6 sources
TCP_MODE="tcp"
UDP_MODE="off"
TCP_PORTS="{",".join(map(str, TCP_WATCHED))}"
SCAN_TRIGGER="0"
SCAN_WINDOW="8"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="2"
IPV6_PREFIX="64"
LOG_TARGET="journal"
"""

# One TCP connection per source address (argv: target, then address:port pairs); errors are fine.
ROTATE = """
import socket, sys
target = sys.argv[1]
for item in sys.argv[2:]:
    addr, port = item.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(1)
    try:
        s.bind((addr, 0))
        s.connect((target, int(port)))
    except OSError:
        pass
    finally:
        s.close()
"""

CONNECT_FROM = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(2)
try:
    s.bind((sys.argv[1], 0))
    s.connect((sys.argv[2], int(sys.argv[3])))
except OSError as exc:
    print(exc); sys.exit(1)
"""


@dataclass
class Stack:
    lab: Lab
    journal: Journal
    sensor: SensorProcess
    f2b: Fail2Ban


# Our in-process action and the stock shell action's variant with prefix sets (fail2ban/action.d/).
BANACTIONS = ("portsentry-nft.py", "portsentry-nftables")


@pytest.fixture(scope="module", params=BANACTIONS)
def stack(request: pytest.FixtureRequest, journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Stack]:
    with Lab("psprx") as lab:
        for addr in (*ROTATING, NEVER_SEEN, NEIGHBOUR, IGNORED, *ROTATING_IGNORED):
            lab.run_attacker(["ip", "addr", "add", f"{addr}/64", "dev", "eth0", "nodad"], check=True)
        # The victim reaches the attacker's other /64s on the link (routes in the victim namespace only).
        lab.run_victim(["ip", "-6", "route", "add", "2001:db8::/32", "dev", "eth0"], check=True)
        lab.serve_tcp(SERVICE_TCP)
        sensor = SensorProcess(lab, SENSOR_CONF, ignore_text=f"{IGNORED}\n", user=sensor_user).start()
        workdir = world_readable_dir("portsentry-f2b-")
        f2b = Fail2Ban(lab, workdir, jail_local(sensor_user[1], sensor.pid, f"banaction = {request.param}\n"))
        try:
            f2b.start()
            yield Stack(lab, journald, sensor, f2b)
        finally:
            f2b.stop()
            sensor.close()
            shutil.rmtree(workdir, ignore_errors=True)


def connects(stack: Stack, source: str) -> bool:
    """A TCP connection from ``source`` (an attacker address) to the victim's web server succeeds."""
    return stack.lab.run_attacker([SYSTEM_PYTHON, "-c", CONNECT_FROM, source, VICTIM6,
                                   str(SERVICE_TCP)]).returncode == 0


def prefix_set(stack: Stack) -> str:
    """`nft list set` of the IPv6 prefix set (empty text if it does not exist yet)."""
    return stack.lab.run_victim(["nft", "list", "set", *TABLE, "net6-set-portsentry"]).stdout


def rotate(stack: Stack, sources: list[str]) -> None:
    pairs = [f"{addr}:{TCP_WATCHED[i % len(TCP_WATCHED)]}" for i, addr in enumerate(sources)]
    stack.lab.run_attacker([SYSTEM_PYTHON, "-c", ROTATE, VICTIM6, *pairs], check=True, timeout=120)


def test_fifty_rotating_addresses_get_their_64_banned_as_one_entry(stack: Stack) -> None:
    assert connects(stack, NEVER_SEEN) and connects(stack, NEIGHBOUR), "service unreachable before the scan"
    stack.f2b.client("set", "portsentry", "bantime", "600")  # the test .local's 2 s would end it mid-test
    try:
        rotation_is_banned_as_one_entry(stack)
    finally:
        stack.f2b.client("set", "portsentry", "bantime", "2")


def rotation_is_banned_as_one_entry(stack: Stack) -> None:
    cursor = stack.journal.cursor()
    started = time.monotonic()
    rotate(stack, ROTATING)
    assert wait_until(lambda: NET in prefix_set(stack), 20, step=0.1), \
        f"{NET} not in net6-set-portsentry:\n{prefix_set(stack)}\n{stack.f2b.log_tail()}"
    print(f"rotation start to the /64 in the set: {time.monotonic() - started:.2f} s")
    assert "flags interval" in prefix_set(stack)
    assert NET in stack.f2b.status()            # `fail2ban-client status portsentry` lists it
    assert not connects(stack, NEVER_SEEN), "an address of the banned /64 that never scanned still connects"
    assert connects(stack, NEIGHBOUR), "the neighbouring /64 is blocked too"

    time.sleep(10)  # SCAN_WINDOW (8 s) and its closing summary
    alerts = stack.sensor.alerts(stack.journal, cursor)
    messages = [a["MESSAGE"] for a in alerts]
    assert 2 <= len(alerts) <= 3, messages
    nets = [a for a in alerts if a.get("PORTSENTRY_NET")]
    assert [a["PORTSENTRY_NET"] for a in nets if "PORTSENTRY_SUMMARY" not in a] == [NET], messages
    assert all(a["MESSAGE"].startswith(f"attackalert: src={NET} ") for a in nets)
    assert sum(1 for a in nets if "PORTSENTRY_SUMMARY" not in a) == 1
    # The prefix's ban in the database, under the prefix: what the escalation ladder counts.
    assert wait_until(lambda: len(recorded_bans(stack, NET)) == 1, 15), recorded_bans(stack, NET)  # type: ignore[arg-type]
    assert NET in prefix_set(stack), "the closing summary (already banned) must not lift the ban"

    stack.f2b.client("set", "portsentry", "unbanip", NET)
    assert NET not in prefix_set(stack)
    assert NET not in stack.f2b.status()
    assert wait_until(lambda: connects(stack, NEVER_SEEN), 5), "unbanip of the /64 did not let it back"


def test_the_ladder_counts_bans_of_the_prefix(stack: Stack) -> None:
    """escalate_after = 3 (the test .local): the third ban of the /64 is permanent; unbanip lifts it."""
    stack.f2b.client("set", "portsentry", "unbanip", NET, check=False)  # a fresh ladder
    for _ in range(2):
        stack.f2b.client("set", "portsentry", "banip", NET)
        assert wait_until(lambda: NET in prefix_set(stack), 10, step=0.1)
        assert wait_until(lambda: NET not in prefix_set(stack), 15, step=0.2), "the time-limited ban did not end"
    stack.f2b.client("set", "portsentry", "banip", NET)
    assert wait_until(lambda: -1 in recorded_bans(stack, NET), 15), recorded_bans(stack, NET)  # type: ignore[arg-type]
    time.sleep(7)  # longer than the second rung (6 s)
    assert NET in prefix_set(stack) and not connects(stack, NEVER_SEEN)
    stack.f2b.client("set", "portsentry", "unbanip", NET)
    assert wait_until(lambda: connects(stack, NEVER_SEEN), 5)


def test_a_64_holding_an_ignored_address_is_not_banned_as_a_prefix(stack: Stack) -> None:
    """The choice (README, doc/DESIGN.md): the ignore list wins; the /64's scanners are banned one by one."""
    cursor = stack.journal.cursor()
    rotate(stack, ROTATING_IGNORED)
    assert wait_until(lambda: len(stack.sensor.alerts(stack.journal, cursor)) >= len(ROTATING_IGNORED), 15)
    alerts = stack.sensor.alerts(stack.journal, cursor)
    assert not any(a.get("PORTSENTRY_NET") for a in alerts), [a["MESSAGE"] for a in alerts]
    assert wait_until(lambda: ROTATING_IGNORED[-1] in stack.f2b.nft_set(6), 15), stack.f2b.log_tail()
    assert IGNORED_NET not in prefix_set(stack)
    assert connects(stack, IGNORED), "an ignored address inside a scanning /64 was locked out"
