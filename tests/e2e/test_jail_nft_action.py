"""The jail with fail2ban/action.d/portsentry-nft.py (libnftables in-process, batched) end to end.

A real fail2ban-server (tests/e2e/f2b.py) in the victim namespace, with the
test .local choosing ``banaction = portsentry-nft.py`` explicitly (so this test
covers the action whatever the shipped default is), and the real kernel's
nftables in that namespace.  The sensor's alerts ban the attacker: the address
is in the set and its TCP and UDP traffic is rejected; ``unbanip`` removes it;
IPv6 alike.  A flushed ruleset is rebuilt with every current ban.  Thousands of
forged addresses banned at once all land in the set and survive a fail2ban
restart (fail2ban re-bans restored tickets through the action); ``unban --all``
empties the sets; the escalation ladder still ends in a
permanent ban that a restart keeps; a stop leaves no table behind.  The chain
holds the stock ``nftables[type=allports]`` action's rules, so the README's
``nft`` commands and a switch back to the stock action keep working.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import sqlite3
import time
from collections.abc import Iterator

import pytest
from f2b import TABLE
from lab import (
    ATTACKER4,
    ATTACKER6,
    VICTIM4,
    VICTIM6,
    Journal,
    Lab,
    wait_until,
)
from test_jail_ban import (
    Stack,
    assert_banned,
    assert_free,
    ban_times,
    jail_stack,
    scan,
    settle,
    tcp_ok,
    unbanip,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BULK = 3000


@pytest.fixture(scope="module")
def stack(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Stack]:
    """Victim with a web server, a UDP echo, the sensor and fail2ban (portsentry-nft); attacker next door."""
    with Lab("psjnft") as lab, jail_stack(lab, journald, sensor_user, "banaction = portsentry-nft.py\n") as built:
        yield built


def chain_rules(stack: Stack) -> list[str]:
    """The rules of inet f2b-table f2b-chain as `nft list chain` prints them."""
    out = stack.lab.run_victim(["nft", "list", "chain", *TABLE, "f2b-chain"]).stdout
    return [line.strip() for line in out.splitlines() if "saddr @" in line]


def db_bans(stack: Stack) -> int:
    """Bans of the jail in fail2ban's database (read-only)."""
    with contextlib.closing(sqlite3.connect(f"file:{stack.f2b.dbfile}?mode=ro", uri=True, timeout=10)) as db:
        return int(db.execute("SELECT count(*) FROM bans WHERE jail = 'portsentry'").fetchone()[0])


def forged(count: int) -> list[str]:
    """``count`` distinct addresses from 198.18.0.0/15."""
    base = ipaddress.ip_address("198.18.0.0")
    return [str(base + 256 * (i // 250) + i % 250 + 1) for i in range(count)]


# --------------------------------------------------------------------------

def test_the_action_is_loaded_with_the_stock_actions_rules(stack: Stack) -> None:
    assert stack.f2b.client("get", "portsentry", "actions").stdout.count("portsentry-nft") == 1
    # What the stock action's `... saddr @<set> reject` lists as.
    assert chain_rules(stack) == [
        "meta l4proto { tcp, udp } ip saddr @addr-set-portsentry reject with icmp port-unreachable",
        "meta l4proto { tcp, udp } ip6 saddr @addr6-set-portsentry reject with icmpv6 port-unreachable"]
    hook = stack.lab.run_victim(["nft", "list", "chain", *TABLE, "f2b-chain"]).stdout
    assert "type filter hook input priority filter - 1; policy accept;" in hook


def test_a_scan_gets_the_attacker_banned_and_unbanip_lets_it_back(stack: Stack) -> None:
    assert tcp_ok(stack, VICTIM4), "service unreachable before any scan"
    since = scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert_banned(stack, ATTACKER4)
    mark = unbanip(stack, ATTACKER4, since)   # settled first: see test_jail_ban's docstring
    assert ATTACKER4 not in stack.f2b.nft_set(4), "unbanip returned before the element was deleted"
    assert_free(stack, ATTACKER4, since, mark)


def test_ipv6_attacker_is_banned_and_unbanned(stack: Stack) -> None:
    assert tcp_ok(stack, VICTIM6)
    since = scan(stack, VICTIM6)
    stack.f2b.wait_in_set(ATTACKER6, timeout=15)
    assert_banned(stack, ATTACKER6)
    assert ATTACKER4 not in stack.f2b.nft_set(4)
    mark = unbanip(stack, ATTACKER6, since)
    assert_free(stack, ATTACKER6, since, mark)


def test_a_firewall_reload_that_flushes_the_ruleset_is_repaired_on_the_next_ban(stack: Stack) -> None:
    """`nft flush ruleset` (what `systemctl reload nftables` does) drops our table; the next ban rebuilds it."""
    first, second = forged(2)
    stack.f2b.client("set", "portsentry", "banip", first)
    stack.f2b.wait_in_set(first)
    stack.lab.run_victim(["nft", "flush", "ruleset"], check=True)
    assert stack.f2b.nft_set(4) == set()
    stack.f2b.client("set", "portsentry", "banip", second)
    stack.f2b.wait_in_set(second)
    assert {first, second} <= stack.f2b.nft_set(4), "the repair did not re-add the current bans"
    assert len(chain_rules(stack)) == 2
    unbanip(stack, first)
    unbanip(stack, second)
    assert stack.f2b.nft_set(4) == set()


def test_thousands_of_bans_all_land_and_survive_a_restart(stack: Stack) -> None:
    """One `banip` of 3,000 forged addresses (what a flood does); restart: all restored; unban --all: none."""
    log_start = len(stack.f2b.log_text())
    stack.f2b.client("set", "portsentry", "bantime", "600")
    try:
        addresses = forged(BULK)
        stack.f2b.client("set", "portsentry", "banip", *addresses, timeout=120)
        assert wait_until(lambda: len(stack.f2b.nft_set(4)) >= BULK, 30, step=0.5), len(stack.f2b.nft_set(4))
        assert stack.f2b.nft_set(4) >= set(addresses)
        # fail2ban's observer thread writes each ban to the database after the ban (what a
        # restart restores); a stop ends its queue after 5 s, so let it finish first.
        assert wait_until(lambda: db_bans(stack) >= BULK, 120, step=1), f"{db_bans(stack)} bans in the database"
    finally:
        stack.f2b.client("set", "portsentry", "bantime", "2")
    stack.f2b.restart()
    assert wait_until(lambda: len(stack.f2b.nft_set(4)) >= BULK, 60, step=0.5), \
        f"{len(stack.f2b.nft_set(4))} of {BULK} restored\n{stack.f2b.log_tail()}"
    assert stack.f2b.nft_set(4) >= set(addresses)
    stack.f2b.client("unban", "--all")
    assert stack.f2b.nft_set(4) == set() and stack.f2b.nft_set(6) == set()
    assert " ERROR " not in stack.f2b.log_text()[log_start:], stack.f2b.log_tail()


def test_repeat_offender_is_banned_for_good_even_across_a_restart(stack: Stack) -> None:
    """The ladder with this action: 2 s, 6 s, then permanent; a restart keeps it; unbanip lifts it."""
    unbanip(stack, ATTACKER4)  # a fresh ladder: unbanip deletes the address's history
    for low, high in ((2, 4), (6, 8)):
        since = scan(stack, VICTIM4)
        stack.f2b.wait_in_set(ATTACKER4, timeout=15)
        settle(stack, ATTACKER4, since)   # the summary line may prolong the ban: read it after
        assert low <= ban_times(stack).get(ATTACKER4, 0) <= high, ban_times(stack)
        stack.f2b.wait_in_set(ATTACKER4, present=False, timeout=15)  # expiry deletes the element
    scan(stack, VICTIM4)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert wait_until(lambda: ban_times(stack).get(ATTACKER4) == -1, 5), ban_times(stack)
    time.sleep(9)  # longer than any time-limited ban of the ladder
    assert_banned(stack, ATTACKER4)

    stack.f2b.restart()
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert ban_times(stack).get(ATTACKER4) == -1
    assert_banned(stack, ATTACKER4)
    assert len(chain_rules(stack)) == 2, "a restart added a second rule"

    unbanip(stack, ATTACKER4)
    assert_free(stack, ATTACKER4)


def test_stop_leaves_no_table_behind(stack: Stack) -> None:
    stack.f2b.stop()
    try:
        out = stack.lab.run_victim(["nft", "-j", "list", "tables"]).stdout
        tables = [t["table"]["name"] for t in json.loads(out)["nftables"] if "table" in t]
        assert "f2b-table" not in tables
    finally:
        stack.f2b.start()
