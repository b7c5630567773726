"""fail2ban/action.d/portsentry-nft.py and prefix tickets (issue 14), through fail2ban's own Actions.

A prefix ticket (``2001:db8:77::/64``, what the filter yields for a prefix alert) goes to
its own interval set, created with its rule on the first prefix ban, next to the
stock sets; an address of the same /64 stays in the address set; a prefix wider
than /32 (IPv6) or /16 (IPv4) is refused.  The real kernel: tests/e2e/test_prefix_rotation.py.
"""

from __future__ import annotations

import pytest
from test_nft_action import TABLE, V4, V6, FakeNft, fake, jail_actions, nft_of, settle

__all__ = ["fake"]  # the fixture, imported for pytest

N4, N6 = "net-set-portsentry", "net6-set-portsentry"
NET = "2001:db8:77::/64"


def test_a_prefix_goes_to_its_interval_set_made_on_the_first_prefix_ban(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    nft = nft_of(action)
    actions.addBannedIP(["2001:db8:77::5", "198.51.100.7"])
    settle(action)
    assert set(nft.state["sets"]) == {V4, V6}, "prefix sets before any prefix ban"
    assert len(nft.state["rules"]) == 2
    actions.addBannedIP([NET, "203.0.113.0/24"])
    settle(action)
    assert nft.elements(N6) == {NET} and nft.elements(N4) == {"203.0.113.0/24"}
    assert nft.elements(V6) == {"2001:db8:77::5"} and nft.elements(V4) == {"198.51.100.7"}
    assert any(f"add set {TABLE} {N6} {{ type ipv6_addr ; flags interval ; }}" in c for c in nft.commands)
    assert [text for _, text in nft.state["rules"]][2:] == [
        f"meta l4proto {{ tcp, udp }} ip saddr @{N4} reject",
        f"meta l4proto {{ tcp, udp }} ip6 saddr @{N6} reject"]
    assert sorted(map(str, actions.getBanList())) == sorted(
        ["2001:db8:77::5", "198.51.100.7", NET, "203.0.113.0/24"])
    assert actions.removeBannedIP(NET) == 1
    assert nft.elements(N6) == set() and nft.elements(V6) == {"2001:db8:77::5"}
    assert action._intact()


@pytest.mark.parametrize("wide", ["2001:db8::/16", "2001:db8::/31", "10.0.0.0/8", "198.50.0.0/15"])
def test_a_prefix_wider_than_32_or_16_is_refused(fake: type[FakeNft], wide: str) -> None:
    actions, action = jail_actions()
    actions.addBannedIP(wide)
    settle(action)
    nft = nft_of(action)
    assert not nft.elements(N6) and not nft.elements(N4) and not nft.elements(V4) and not nft.elements(V6)


def test_flush_and_stop_cover_the_prefix_sets(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP([NET, "2001:db8::7"])
    settle(action)
    nft = nft_of(action)
    assert action.flush()
    assert nft.elements(N6) == set() and nft.elements(V6) == set()
    action.stop()
    assert nft.state["sets"] == {} and nft.state["rules"] == []
