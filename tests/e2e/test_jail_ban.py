"""The user's story for banning (issue 4, "Done when" 2 and 3).

A sensor runs on the victim; fail2ban runs there too with our jail pack (a private
server: socket, pidfile, database, log in a temp dir; nftables in the victim
namespace only).  An attacker scans: it gets banned (the nft set holds it, its TCP
connections and UDP probes fail), `status portsentry` lists it, and
`set portsentry unbanip` lets it in again; IPv6 alike.  Coming back again and
again escalates to a permanent ban that survives a fail2ban restart and that
`set portsentry unbanip` still lifts.  A forged alert from another local user bans
nobody.

Test times: bantime 2 s, x3 for the second ban, the 3rd ban within the window is
permanent.  The jail reads only journal entries with the sensor's _UID and _PID
(journald sets both): other test sessions may log alerts for the same
documentation addresses as the same user.

The sensor reports a scan in two lines: the alert on its first probe and, when
its window closes (SCAN_WINDOW, 1 s later), a summary.  fail2ban bans on the
first and queues the second as one more ticket; an unbanip before that ticket is
acted on would be undone by it (a new ban after the admin's unbanip, counted on
the ladder).  So every unbanip (``unbanip``, ``forgive``) first waits until the
scan is ``settle``d: the sensor has reported every port of it and fail2ban has
acted on every line (logged Ban, or "already banned", which fail2ban logs at
DEBUG: the test server logs at DEBUG).  The ban action's speed does not matter;
a fast one only reaches the unbanip sooner.  ``assert_free`` then checks that no
ban came after the unbanip.

Each test starts from an attacker with no ban history (``forgive``: unbanip
deletes the address from fail2ban's database) and reads the ladder's rungs from
that database (the bantime fail2ban recorded for each ban), not from a clock.
Every "nobody was banned" check comes after a positive control: a second
attacker scans, and fail2ban is seen to find it, so it has read past whatever
came before.
"""

from __future__ import annotations

import contextlib
import pwd
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from f2b import Fail2Ban
from f2bclient import ban_times as parse_ban_times
from lab import (
    ATTACKER4,
    ATTACKER6,
    SYSTEM_PYTHON,
    VICTIM4,
    VICTIM6,
    Journal,
    Lab,
    SensorProcess,
    run,
    wait_until,
    world_readable_dir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SERVICE_TCP = 8080   # a real service on the victim: what a banned attacker loses
SERVICE_UDP = 9999   # a UDP echo service on the victim
TCP_WATCHED = (1, 79, 111, 143)
UDP_WATCHED = (7, 69)
FORGED = "198.51.100.77"  # a third address that forged alerts name
SECOND4, SECOND6 = "192.0.2.3", "2001:db8::3"  # the positive control's scanner

SENSOR_CONF = f"""\
# portsentry-sensor e2e: the jail pack
TCP_MODE="tcp"
UDP_MODE="udp"
TCP_PORTS="{",".join(map(str, TCP_WATCHED))}"
UDP_PORTS="{",".join(map(str, UDP_WATCHED))}"
SCAN_TRIGGER="0"
SCAN_WINDOW="1"
SUMMARY_INTERVAL="1"
SUMMARY_MAX_LINES="10"
LOG_TARGET="journal"
"""

UDP_ECHO = f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", {SERVICE_UDP}))
while True:
    data, peer = s.recvfrom(512)
    s.sendto(data, peer)
"""

TCP_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as exc:
    print(exc); sys.exit(1)
"""

UDP_PROBE = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(1.5)
try:
    s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
    sys.exit(0 if s.recv(64) == b"ping" else 1)
except OSError as exc:
    print(exc); sys.exit(1)
"""


@dataclass
class Since:
    """Where the journal and fail2ban's log stood when a scan began."""

    cursor: str
    mark: int
    ports: int   # how many watched ports the scan probes


@dataclass
class Stack:
    """The lab with a sensor and fail2ban in the victim."""

    lab: Lab
    journal: Journal
    sensor: SensorProcess
    f2b: Fail2Ban
    uid: int


def jail_local(uid: int, pid: int, extra: str = "") -> str:
    """The test .local: short times, the sensor's _UID (and _PID: see the module docstring)."""
    return (f"[portsentry]\njournalmatch = _UID={uid} _PID={pid}\n{extra}"
            "bantime = 2\nfindtime = 60\nbantime.multipliers = 1 3\n"
            "escalate_after = 3\nescalate_window = 1h\n")


@contextlib.contextmanager
def jail_stack(lab: Lab, journald: Journal, sensor_user: tuple[str, int, int],
               local_extra: str = "") -> Iterator[Stack]:
    """In ``lab``'s victim: a web server, a UDP echo, the sensor and fail2ban with jail_local()."""
    lab.serve_tcp(SERVICE_TCP)
    lab.spawn_victim([SYSTEM_PYTHON, "-c", UDP_ECHO])
    wait_until(lambda: lab.listening(lab.victim, "udp", SERVICE_UDP), 10)
    sensor = SensorProcess(lab, SENSOR_CONF, user=sensor_user).start()
    workdir = world_readable_dir("portsentry-f2b-")
    # DEBUG: fail2ban logs "already banned" (what settle() waits for) only at DEBUG.
    f2b = Fail2Ban(lab, workdir, jail_local(sensor_user[1], sensor.pid, local_extra), loglevel="DEBUG")
    try:
        f2b.start()
        yield Stack(lab, journald, sensor, f2b, sensor_user[1])
    finally:
        f2b.stop()
        sensor.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Stack]:
    """Victim with a web server, a UDP echo, the sensor and fail2ban; attacker next door."""
    with Lab("psjail") as lab:
        lab.add_attacker("b", SECOND4, SECOND6)
        with jail_stack(lab, journald, sensor_user) as built:
            yield built


def tcp_ok(stack: Stack, address: str, port: int = SERVICE_TCP) -> bool:
    """A TCP connection from the attacker to the victim's web server succeeds."""
    return stack.lab.run_attacker([SYSTEM_PYTHON, "-c", TCP_PROBE, address, str(port)]).returncode == 0


def udp_ok(stack: Stack, address: str) -> bool:
    """A UDP probe from the attacker to the victim's echo service gets its answer."""
    return stack.lab.run_attacker([SYSTEM_PYTHON, "-c", UDP_PROBE, address, str(SERVICE_UDP)]).returncode == 0


def scan(stack: Stack, target: str, ns: str | None = None, ports: tuple[int, ...] = TCP_WATCHED) -> Since:
    """A TCP connect scan of the watched ports (the sensor alerts on the first); where it began."""
    since = Since(stack.journal.cursor(), len(stack.f2b.log_text()), len(ports))
    args = ["-sT", "-p", ",".join(map(str, ports))]
    stack.lab.nmap([*args, "-6", target] if ":" in target else [*args, target], ns=ns, timeout=60)
    return since


def reported(stack: Stack, address: str, since: Since) -> int | None:
    """How many alert lines the sensor wrote for the scan, once they cover all its ports (else None).

    A line without PORTSENTRY_SUMMARY opens a window; a summary carries its window's count so far.
    """
    entries = stack.sensor.alerts(stack.journal, since.cursor, src=address)
    total = current = 0
    for entry in entries:
        if entry.get("PORTSENTRY_SUMMARY") != "1":
            total += current
        current = int(entry["PORTSENTRY_COUNT"])
    return len(entries) if total + current >= since.ports else None


def acted_on(log: str, address: str) -> tuple[int, int]:
    """(lines fail2ban found for the address, tickets its actions thread took) in a log excerpt."""
    ip = re.escape(address)
    found = len(re.findall(rf"\[portsentry\] Found {ip} ", log))
    acted = len(re.findall(rf"\[portsentry\] (?:(?:Restore )?Ban {ip}|Reban {ip}\b.*|{ip} already banned"
                           rf"|Ignore {ip}, expired bantime)$", log, re.M))
    return found, acted


def settle(stack: Stack, address: str, since: Since) -> None:
    """Wait until the sensor has reported the whole scan and fail2ban has acted on every line of it."""
    def done() -> bool:
        lines = reported(stack, address, since)
        if lines is None:
            return False
        found, acted = acted_on(stack.f2b.log_text()[since.mark:], address)
        return found >= lines and acted >= found
    assert wait_until(done, 15), (f"scan of {address} not settled: sensor lines {reported(stack, address, since)}, "
                                  f"fail2ban (found, acted) {acted_on(stack.f2b.log_text()[since.mark:], address)}"
                                  f"\n{stack.f2b.log_tail()}")


def forgive(stack: Stack, address: str, since: Since | None = None) -> None:
    """Start from no history: unbanip deletes the address from the database even when not banned.

    ``since``: the address's last scan, settled first (see the module docstring).
    """
    if since is not None:
        settle(stack, address, since)
    stack.f2b.client("set", "portsentry", "unbanip", address, check=False)
    stack.f2b.wait_in_set(address, present=False)


def recorded_bans(stack: Stack, address: str) -> list[int]:
    """The bantime fail2ban's database recorded for each ban of the address, oldest first (-1: permanent)."""
    with contextlib.closing(sqlite3.connect(f"file:{stack.f2b.dbfile}?mode=ro", uri=True, timeout=10)) as db:
        rows = db.execute("SELECT bantime FROM bans WHERE jail = 'portsentry' AND ip = ? "
                          "ORDER BY timeofban, rowid", (address,)).fetchall()
    return [int(row[0]) for row in rows]


def wait_recorded(stack: Stack, address: str, count: int) -> list[int]:
    """Wait until the database holds ``count`` bans of the address (the observer records each one
    after it has decided its bantime); return their bantimes."""
    assert wait_until(lambda: len(recorded_bans(stack, address)) >= count, 15), \
        f"{recorded_bans(stack, address)}\n{stack.f2b.log_tail()}"
    return recorded_bans(stack, address)


def ban_control(stack: Stack) -> None:
    """Positive control: the second attacker scans now; wait until fail2ban has found and banned it.

    fail2ban reads the journal in order, so every entry before this scan's alert has been
    read (and matched or not) by then.  The control is forgiven again afterwards.
    """
    mark = len(stack.f2b.log_text())
    forgive(stack, SECOND4)
    since = scan(stack, VICTIM4, ns=f"{stack.lab.prefix}-b")
    found = f"[portsentry] Found {SECOND4}"
    assert wait_until(lambda: found in stack.f2b.log_text()[mark:], 15), \
        f"positive control: fail2ban did not find {SECOND4}\n{stack.f2b.log_tail()}"
    stack.f2b.wait_in_set(SECOND4)
    forgive(stack, SECOND4, since)


def banned_list(stack: Stack) -> list[str]:
    """The 'Banned IP list' of `fail2ban-client status portsentry`."""
    match = re.search(r"Banned IP list:\s*(.*)", stack.f2b.status())
    return match.group(1).split() if match else []


def ban_times(stack: Stack) -> dict[str, int]:
    """`get portsentry banip --with-time`: address -> its bantime in s (-1: permanent).

    A summary alert that arrives while the address is banned prolongs the ban by
    the time between the two alerts (fail2ban's "already banned" path), so a 2 s
    ban may read 3.
    """
    return parse_ban_times(stack.f2b.client("get", "portsentry", "banip", "--with-time").stdout)


def unbanip(stack: Stack, address: str, since: Since | None = None) -> int:
    """What the admin types, once the address's last scan (``since``) has settled.

    Returns where fail2ban's log stood just before (for assert_free).
    """
    if since is not None:
        settle(stack, address, since)
    mark = len(stack.f2b.log_text())
    stack.f2b.client("set", "portsentry", "unbanip", address)
    return mark


def assert_banned(stack: Stack, address: str) -> None:
    """In the nft set, in `status portsentry`, and locked out (TCP and UDP)."""
    assert address in stack.f2b.nft_set(6 if ":" in address else 4)
    assert address in banned_list(stack)
    victim = VICTIM6 if ":" in address else VICTIM4
    assert not tcp_ok(stack, victim), "a banned attacker still connects over TCP"
    assert not udp_ok(stack, victim), "a banned attacker still gets UDP answers"


def assert_free(stack: Stack, address: str, since: Since | None = None, mark: int | None = None) -> None:
    """Out of the set and the jail, and served again (TCP and UDP).

    With the scan's ``since`` and the log ``mark`` unbanip returned: once every line of
    that scan has been acted on, no ban of the address came after the unbanip.
    """
    if since is not None and mark is not None:
        settle(stack, address, since)
        after = stack.f2b.log_text()[mark:]
        assert not re.search(rf"\[portsentry\] (?:Ban|Reban) {re.escape(address)}\b", after), \
            f"{address} was banned again after unbanip:\n{after}"
    stack.f2b.wait_in_set(address, present=False)
    assert address not in banned_list(stack)
    victim = VICTIM6 if ":" in address else VICTIM4
    assert wait_until(lambda: tcp_ok(stack, victim), 5), "unbanned attacker cannot connect"
    assert wait_until(lambda: udp_ok(stack, victim), 5), "unbanned attacker gets no UDP answer"


# --------------------------------------------------------------------------

def test_scan_gets_the_attacker_banned_and_unbanip_lets_it_back(stack: Stack) -> None:
    """A connect scan from the attacker: banned within seconds; unbanip restores access."""
    forgive(stack, ATTACKER4)
    assert tcp_ok(stack, VICTIM4) and udp_ok(stack, VICTIM4), "services unreachable before any scan"
    started = time.monotonic()
    since = scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    print(f"scan start to nft set membership: {time.monotonic() - started:.2f} s")
    assert_banned(stack, ATTACKER4)
    mark = unbanip(stack, ATTACKER4, since)
    assert_free(stack, ATTACKER4, since, mark)


def test_ipv6_attacker_is_banned_too(stack: Stack) -> None:
    """The same over IPv6: the ip6 set holds the address; unbanip lifts it."""
    forgive(stack, ATTACKER6)
    assert tcp_ok(stack, VICTIM6)
    since = scan(stack, VICTIM6)
    stack.f2b.wait_in_set(ATTACKER6, timeout=15)
    assert_banned(stack, ATTACKER6)
    assert ATTACKER4 not in stack.f2b.nft_set(4), "an IPv6 scan banned the IPv4 address"
    mark = unbanip(stack, ATTACKER6, since)
    assert_free(stack, ATTACKER6, since, mark)


def test_forged_alerts_from_another_local_user_ban_nobody(stack: Stack) -> None:
    """logger -t portsentry-sensor and journal.send as 'nobody', naming a third address: no ban.

    The forged entries are in the journal, with nobody's _UID (journald sets it, whatever the
    client sends); the text passes our filter; the running jail's journalmatch selects the real
    sensor's alerts and not them; and fail2ban has read past them (it found a later real scan)
    without a Found for the forged address.
    """
    nobody = pwd.getpwnam("nobody").pw_uid
    text = (f"attackalert: src={FORGED} dst={VICTIM4} proto=tcp dport=135 scan=syn mode=atcp "
            f"verified=yes count=1 TCP SYN scan from host {FORGED} to TCP port 135")
    as_nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    cursor = stack.journal.cursor()
    mark = len(stack.f2b.log_text())
    run([*as_nobody, "logger", "-t", "portsentry-sensor", "-p", "daemon.notice", "--journald"],
        input=f"MESSAGE={text}\nSYSLOG_IDENTIFIER=portsentry-sensor\n")
    run([*as_nobody, SYSTEM_PYTHON, "-c",
         "import sys; from systemd import journal; journal.send(sys.argv[1], "
         "SYSLOG_IDENTIFIER='portsentry-sensor', MESSAGE_ID='6f0b7d8e3c2a4f1b9d5e8a7c4b3f2e1d', "
         f"PORTSENTRY_SRC='{FORGED}', _UID='{stack.uid}', _PID='{stack.sensor.pid}', "
         "_SYSTEMD_UNIT='portsentry-sensor.service')",
         text])
    def forged_entries() -> list[dict[str, str]]:
        return [e for e in stack.journal.entries(cursor) if FORGED in e.get("MESSAGE", "")]
    assert wait_until(lambda: len(forged_entries()) == 2, 10), \
        f"the forged entries did not reach the journal: {forged_entries()}"
    forged = forged_entries()
    assert all(e["_UID"] == str(nobody) for e in forged), "journald let a client set _UID"
    assert all(e["_PID"] != str(stack.sensor.pid) for e in forged), "journald let a client set _PID"

    ban_control(stack)   # a real alert after the forged ones, found by fail2ban

    assert FORGED not in stack.f2b.nft_set(4)
    assert FORGED not in banned_list(stack)
    assert FORGED not in stack.f2b.log_text()[mark:]
    # The text itself passes the filter (selected by the forger's _UID, it yields the address);
    # the running jail's own journalmatch selects the sensor's real alerts and not the forgery.
    jail_match = stack.f2b.client("get", "portsentry", "journalmatch").stdout
    assert f"_UID={stack.uid}" in jail_match and f"_PID={stack.sensor.pid}" in jail_match, jail_match
    assert FORGED in journal_matches(stack, f"_UID={nobody}")
    selected = journal_matches(stack, f"_UID={stack.uid} _PID={stack.sensor.pid}")
    assert SECOND4 in selected and FORGED not in selected, selected


def journal_matches(stack: Stack, journalmatch: str) -> set[str]:
    """Addresses our filter yields from the whole journal under one journalmatch (fail2ban-regex)."""
    out = run(["fail2ban-regex", "-c", str(stack.f2b.confdir), "-m", journalmatch, "-o", "<ip>",
               "systemd-journal", "portsentry-sensor"], timeout=120).stdout
    return set(out.split())


def test_repeat_offender_is_banned_for_good_even_across_a_restart(stack: Stack) -> None:
    """Bans of 2 s, 6 s, then permanent; a restart keeps it; unbanip still lifts it."""
    forgive(stack, ATTACKER4)
    for rung, ladder in ((1, [2]), (2, [2, 6])):
        scan(stack, VICTIM4)
        stack.f2b.wait_in_set(ATTACKER4, timeout=15)
        assert wait_recorded(stack, ATTACKER4, rung) == ladder
        stack.f2b.wait_in_set(ATTACKER4, present=False, timeout=15)  # the ban expires by itself
    since = scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert wait_until(lambda: ban_times(stack).get(ATTACKER4) == -1, 5), ban_times(stack)
    assert "Permanent ban 192.0.2.2" in stack.f2b.log_text()
    settle(stack, ATTACKER4, since)   # the scan's summary line does not undo the permanent ban
    assert ban_times(stack).get(ATTACKER4) == -1, ban_times(stack)
    time.sleep(9)  # longer than any time-limited ban of the ladder
    assert_banned(stack, ATTACKER4)

    stack.f2b.restart()
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert ban_times(stack).get(ATTACKER4) == -1
    assert_banned(stack, ATTACKER4)

    # The scan's lines were acted on before the restart (the permanent ban was seen):
    # no settle needed, and the restarted server's log has them already.
    unbanip(stack, ATTACKER4)
    assert_free(stack, ATTACKER4)
    mark = len(stack.f2b.log_text())
    stack.f2b.restart()
    ban_control(stack)   # the restarted jail has restored its bans and read the journal since
    assert f"Ban {ATTACKER4}" not in stack.f2b.log_text()[mark:], "unbanip did not stick across a restart"
    assert ATTACKER4 not in stack.f2b.nft_set(4)
    assert tcp_ok(stack, VICTIM4)


def test_after_unbanip_the_ladder_starts_again(stack: Stack) -> None:
    """unbanip forgives: after two bans (2 s, then 6 s), the next scan gets the first, short ban again.

    The rungs' scans probe one port: one alert line, no closing summary, so no second ticket
    of the same scan can reach fail2ban after a 2 s ban has already run out (on a loaded
    machine it did, and was banned as a rung of its own, with its own bantime).
    """
    forgive(stack, ATTACKER4)
    for rung, ladder in ((1, [2]), (2, [2, 6])):
        since = scan(stack, VICTIM4, ports=TCP_WATCHED[:1])
        settle(stack, ATTACKER4, since)
        stack.f2b.wait_in_set(ATTACKER4, timeout=15)
        assert wait_recorded(stack, ATTACKER4, rung) == ladder
        if rung == 1:
            stack.f2b.wait_in_set(ATTACKER4, present=False, timeout=15)
    mark = unbanip(stack, ATTACKER4, since)   # settled: the scan's window is closed
    assert_free(stack, ATTACKER4, since, mark)
    since = scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert wait_recorded(stack, ATTACKER4, 1) == [2]
    forgive(stack, ATTACKER4, since)


def test_fail2ban_unban_lifts_the_ban_in_every_jail(stack: Stack) -> None:
    """`fail2ban-client unban IP` (no jail) lifts our ban as well."""
    forgive(stack, ATTACKER4)
    since = scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    settle(stack, ATTACKER4, since)
    mark = len(stack.f2b.log_text())
    stack.f2b.client("unban", ATTACKER4)
    assert_free(stack, ATTACKER4, since, mark)


def test_sensor_alerts_are_what_banned(stack: Stack) -> None:
    """Every ban comes from a sensor alert in the journal (fail2ban's log names the jail and address)."""
    cursor = stack.journal.cursor()
    mark = len(stack.f2b.log_text())
    scans = {}
    for address, target in ((ATTACKER4, VICTIM4), (ATTACKER6, VICTIM6)):
        forgive(stack, address)
        scans[address] = scan(stack, target)
        stack.f2b.wait_in_set(address, timeout=15)
        settle(stack, address, scans[address])
    log = stack.f2b.log_text()[mark:]
    banned = set(re.findall(r"\[portsentry\] Ban (\S+)", log))
    assert banned == {ATTACKER4, ATTACKER6}, log
    for address in banned:
        assert f"[portsentry] Found {address}" in log, log
        assert stack.sensor.alerts(stack.journal, cursor, src=address), f"no sensor alert for {address}"
        forgive(stack, address)
    assert "ERROR" not in stack.f2b.log_text(), stack.f2b.log_text()
