"""fail2ban/action.d/portsentry-nft.py through fail2ban's own Actions (load, ban, unban, flush, reload).

The action talks to the kernel through libnftables; in-process in the test's own
(root) network namespace that would touch the host's firewall, so here
libnftables is replaced by a recorder (``FakeNft``) that keeps a tiny model of
the ruleset: transactions are all-or-nothing, deleting a missing element fails
as nft does.  The real kernel, a real fail2ban-server and real traffic are
tests/e2e/test_jail_nft_action.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, ClassVar

import pytest

if importlib.util.find_spec("fail2ban") is None:
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        raise ImportError("fail2ban is not installed in CI (tools/setup-env installs it)")
    pytest.skip("fail2ban is not installed (tools/setup-env installs it)", allow_module_level=True)
from f2b_harness import load_action_file

from fail2ban.server.actions import Actions

ACTION = Path(__file__).resolve().parents[2] / "fail2ban" / "action.d" / "portsentry-nft.py"
JAIL_PARAMS = {"name": "portsentry", "port": "0:65535", "protocol": "tcp,udp"}  # what jail.d passes
TABLE = "inet f2b-table"
V4, V6 = "addr-set-portsentry", "addr6-set-portsentry"


class FakeNft:
    """libnftables' Nftables: cmd() on a small model of one table; records every call."""

    instances: ClassVar[list[FakeNft]] = []

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.state: dict[str, Any] = {"table": False, "chain": None, "sets": {}, "rules": [], "handle": 0}
        self.refuse: set[str] = set()   # elements the "kernel" rejects
        self.json = False
        FakeNft.instances.append(self)

    def set_json_output(self, on: bool) -> None:
        self.json = on

    def set_handle_output(self, on: bool) -> None:
        pass

    def elements(self, name: str) -> set[str]:
        return set(self.state["sets"].get(name, set()))

    def cmd(self, text: str) -> tuple[int, str, str]:
        self.commands.append(text)
        saved = copy.deepcopy(self.state)
        out = ""
        try:
            for line in text.splitlines():
                out += self._line(line.strip())
        except LookupError as exc:
            self.state = saved
            return 1, "", f"Error: Could not process rule: No such file or directory\n{exc}\n"
        except ValueError as exc:
            self.state = saved
            return 1, "", f"Error: {exc}\n"
        return 0, out, ""

    def _line(self, line: str) -> str:
        for prefix, handler in (
                (f"add table {TABLE}", self._add_table), (f"add chain {TABLE} ", self._add_chain),
                (f"add set {TABLE} ", self._add_set), (f"add rule {TABLE} f2b-chain ", self._add_rule),
                ("add element ", self._element), ("delete element ", self._element),
                (f"flush set {TABLE} ", self._flush_set), (f"delete rule {TABLE} f2b-chain handle ", self._del_rule),
                (f"delete set {TABLE} ", self._del_set), (f"delete table {TABLE}", self._del_table),
                (f"list chain {TABLE} f2b-chain", self._list_chain), (f"list table {TABLE}", self._list_table)):
            if line.startswith(prefix):
                return handler(line) or ""
        raise ValueError(f"unexpected command {line!r}")

    def _add_table(self, line: str) -> None:
        self.state["table"] = True

    def _add_chain(self, line: str) -> None:
        self._need_table()
        self.state["chain"] = self.state["chain"] or line.split(" ", 5)[5]

    def _add_set(self, line: str) -> None:
        self._need_table()
        self.state["sets"].setdefault(line.split()[4], set())

    def _add_rule(self, line: str) -> None:
        if self.state["chain"] is None:
            raise LookupError(line)
        self.state["handle"] += 1
        self.state["rules"].append((self.state["handle"], line.split("f2b-chain ", 1)[1]))

    def _element(self, line: str) -> None:
        verb, name = line.split()[0], line.split()[4]
        if name not in self.state["sets"]:
            raise LookupError(line)
        elements = self.state["sets"][name]
        for item in (i.strip() for i in line.split("{", 1)[1].rstrip("} ").split(",")):
            if item in self.refuse:
                raise ValueError(f"refused {item}")
            if verb == "delete" and item not in elements:
                raise LookupError(line)
            (elements.add if verb == "add" else elements.discard)(item)

    def _flush_set(self, line: str) -> None:
        if line.split()[4] not in self.state["sets"]:
            raise LookupError(line)
        self.state["sets"][line.split()[4]] = set()

    def _del_rule(self, line: str) -> None:
        self.state["rules"] = [r for r in self.state["rules"] if r[0] != int(line.split()[-1])]

    def _del_set(self, line: str) -> None:
        del self.state["sets"][line.split()[4]]

    def _del_table(self, line: str) -> None:
        self._need_table()
        self.state.update(table=False, chain=None, sets={}, rules=[])

    def _list_table(self, line: str) -> str:
        self._need_table()
        return "table inet f2b-table {\n" + "".join(f"\tset {s} {{\n\t}}\n" for s in self.state["sets"]) + "}\n"

    def _need_table(self) -> None:
        if not self.state["table"]:
            raise LookupError("no table")

    def _list_chain(self, line: str) -> str:
        if self.state["chain"] is None:
            raise LookupError(line)
        assert self.json, "the action parses the chain as JSON"
        rules = [{"rule": {"family": "inet", "table": "f2b-table", "chain": "f2b-chain", "handle": handle,
                           "expr": [{"match": {"right": "@" + re.search(r"@(\S+)", text).group(1)}}]}}
                 for handle, text in self.state["rules"]]  # type: ignore[union-attr]
        return json.dumps({"nftables": [{"chain": {"name": "f2b-chain"}}, *rules]})


def load_module() -> ModuleType:
    """Import the action file by path (as fail2ban does), no __pycache__ in the pack."""
    return load_action_file(ACTION, "portsentry_nft")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> type[FakeNft]:
    """Every portsentry-nft action fail2ban loads in this test gets a FakeNft."""
    FakeNft.instances = []
    real_load = Actions._load_python_module

    def load(path: str) -> ModuleType:
        module = real_load(path)
        if Path(path).name == ACTION.name:
            module.Action.nft_factory = FakeNft
        return module
    monkeypatch.setattr(Actions, "_load_python_module", staticmethod(load))
    return FakeNft


def jail_actions(params: dict[str, str] | None = None) -> tuple[Actions, Any]:
    """fail2ban's Actions of a jail, with our action added and started as the actions thread would."""
    jail = SimpleNamespace(name="portsentry", database=None)
    actions = Actions(jail)
    jail.actions = actions
    actions.add("portsentry-nft", str(ACTION), dict(params or JAIL_PARAMS))
    action = actions["portsentry-nft"]
    action.start()
    return actions, action


def nft_of(action: Any) -> FakeNft:
    return action._nft  # type: ignore[no-any-return]


def settle(action: Any) -> None:
    """Wait for the committer (what unbanip does before it deletes)."""
    action._drain()


def addresses(count: int, base: str = "198.18") -> list[str]:
    return [f"{base}.{i // 250}.{i % 250 + 1}" for i in range(count)]


# --------------------------------------------------------------------------

def test_start_builds_the_stock_actions_table_sets_and_rules(fake: type[FakeNft]) -> None:
    _, action = jail_actions()
    nft = nft_of(action)
    assert nft.state["table"] and nft.state["chain"] == "{ type filter hook input priority -1 ; }"
    assert set(nft.state["sets"]) == {V4, V6}
    assert [text for _, text in nft.state["rules"]] == [
        f"meta l4proto {{ tcp, udp }} ip saddr @{V4} reject",
        f"meta l4proto {{ tcp, udp }} ip6 saddr @{V6} reject"]
    assert "type ipv4_addr" in nft.commands[0] and "type ipv6_addr" in nft.commands[0]


def test_a_restart_after_a_crash_adds_no_second_rule(fake: type[FakeNft]) -> None:
    _, action = jail_actions()
    nft = nft_of(action)
    action._running = False  # the process died: nothing was stopped
    action.start()
    assert len(nft.state["rules"]) == 2


def test_bans_reach_the_sets_in_few_transactions(fake: type[FakeNft]) -> None:
    """1,000 bans through fail2ban's ban path: all in the set, in batches, not one command each."""
    actions, action = jail_actions()
    nft = nft_of(action)
    before = len(nft.commands)
    ips = addresses(1000)
    assert actions.addBannedIP(ips) == 1000
    settle(action)
    assert nft.elements(V4) == set(ips)
    transactions = len(nft.commands) - before
    assert 1 <= transactions <= 100, f"{transactions} nft transactions for 1000 bans"


def test_a_lone_ban_is_in_the_set_within_milliseconds(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP("198.51.100.7")
    deadline = time.monotonic() + 2
    while "198.51.100.7" not in nft_of(action).elements(V4) and time.monotonic() < deadline:
        time.sleep(0.001)
    assert "198.51.100.7" in nft_of(action).elements(V4)


def test_ipv6_goes_to_the_ip6_set(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP(["2001:db8::7", "198.51.100.7"])
    settle(action)
    assert nft_of(action).elements(V6) == {"2001:db8::7"}
    assert nft_of(action).elements(V4) == {"198.51.100.7"}


def test_unbanip_right_after_the_ban_removes_it(fake: type[FakeNft]) -> None:
    """unban waits for the queued ban: a queued add cannot land after the delete."""
    actions, action = jail_actions({**JAIL_PARAMS, "batch_delay": "0.2"})
    actions.addBannedIP(["198.51.100.7", "2001:db8::7"])
    assert actions.removeBannedIP(["198.51.100.7", "2001:db8::7"]) == 2
    time.sleep(0.3)
    assert nft_of(action).elements(V4) == set() and nft_of(action).elements(V6) == set()


def test_unban_of_an_element_already_gone_is_no_error(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP("198.51.100.7")
    settle(action)
    nft_of(action).cmd(f"delete element {TABLE} {V4} {{ 198.51.100.7 }}")  # an admin, by hand
    action.unban({"ip": "198.51.100.7"})  # raises if the error is not swallowed
    assert actions.getBanList() == ["198.51.100.7"]


def test_one_refused_address_does_not_keep_the_batch_out(fake: type[FakeNft], caplog: pytest.LogCaptureFixture) -> None:
    actions, action = jail_actions({**JAIL_PARAMS, "batch_delay": "0.05"})
    nft_of(action).refuse.add("198.51.100.9")
    actions.addBannedIP(["198.51.100.7", "198.51.100.8", "198.51.100.9", "198.51.100.10"])
    settle(action)
    assert nft_of(action).elements(V4) == {"198.51.100.7", "198.51.100.8", "198.51.100.10"}
    assert "ban of 198.51.100.9 failed" in caplog.text


def test_restored_and_permanent_tickets_are_banned_like_any_other(fake: type[FakeNft]) -> None:
    """fail2ban re-bans restored tickets through ban() after a restart; bantime -1 changes nothing here."""
    from fail2ban.server.ticket import BanTicket
    _, action = jail_actions()
    ticket = BanTicket("198.51.100.7", time.time())
    ticket.restored = True
    ticket.setBanTime(-1)
    action.ban(Actions.ActionInfo(ticket, None))
    settle(action)
    assert "198.51.100.7" in nft_of(action).elements(V4)
    assert not getattr(action, "norestored", False)


def test_flush_empties_both_sets_in_one_transaction(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP([*addresses(50), "2001:db8::7"])
    settle(action)
    before = len(nft_of(action).commands)
    assert actions.removeBannedIP() == 51  # `fail2ban-client unban --all`: fail2ban calls flush()
    assert nft_of(action).elements(V4) == set() and nft_of(action).elements(V6) == set()
    assert len(nft_of(action).commands) - before == 1


def test_stop_removes_rules_and_sets_and_an_empty_table(fake: type[FakeNft]) -> None:
    _, action = jail_actions()
    action.stop()
    assert nft_of(action).state == {**nft_of(action).state, "table": False, "sets": {}, "rules": []}


def test_stop_keeps_the_table_while_another_jail_has_a_set_in_it(fake: type[FakeNft]) -> None:
    _, action = jail_actions()
    nft_of(action).cmd(f"add set {TABLE} addr-set-sshd {{ type ipv4_addr ; }}")
    action.stop()
    assert nft_of(action).state["table"] and set(nft_of(action).state["sets"]) == {"addr-set-sshd"}
    assert nft_of(action).state["rules"] == []


def test_a_jail_reload_keeps_the_action_and_its_bans(fake: type[FakeNft]) -> None:
    """fail2ban's reload protocol: without reload()/clearAllParams() it would unban all and drop the action."""
    actions, action = jail_actions()
    actions.addBannedIP("198.51.100.7")
    settle(action)
    actions.reload(begin=True)
    actions.add("portsentry-nft", str(ACTION), dict(JAIL_PARAMS), reload=True)
    actions.reload(begin=False)
    assert actions["portsentry-nft"] is action
    assert nft_of(action).elements(V4) == {"198.51.100.7"}


def test_a_reload_with_new_names_moves_the_bans(fake: type[FakeNft]) -> None:
    actions, action = jail_actions()
    actions.addBannedIP(["198.51.100.7", "2001:db8::7"])
    settle(action)
    action.reload(**{**JAIL_PARAMS, "name": "other"})
    assert set(nft_of(action).state["sets"]) == {"addr-set-other", "addr6-set-other"}
    assert nft_of(action).elements("addr-set-other") == {"198.51.100.7"}
    assert nft_of(action).elements("addr6-set-other") == {"2001:db8::7"}


@pytest.mark.parametrize("bad", [{"port": "22"}, {"name": "a b"}, {"protocol": "icmp"}, {"blocktype": "accept"},
                                 {"table_family": "ip"}, {"chain_priority": "x"}, {"batch_delay": "2"},
                                 {"color": "red"}])
def test_bad_parameters_are_refused(fake: type[FakeNft], bad: dict[str, str]) -> None:
    jail = SimpleNamespace(name="portsentry", database=None)
    with pytest.raises(ValueError, match="portsentry-nft: "):
        Actions(jail).add("portsentry-nft", str(ACTION), {**JAIL_PARAMS, **bad})


def test_without_python3_nftables_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_module()
    monkeypatch.setattr(module, "nftables", None)
    with pytest.raises(RuntimeError, match="python3-nftables is not installed"):
        module.Action(SimpleNamespace(name="portsentry"), "portsentry-nft")


def test_the_real_module_is_importable_by_the_system_python() -> None:
    """python3-nftables (tools/setup-env, packaging Depends) is what fail2ban's /usr/bin/python3 imports."""
    module = load_module()
    assert module.nftables is not None, "python3-nftables is not installed (tools/setup-env installs it)"
    assert callable(module.nftables.Nftables)


def test_a_flushed_ruleset_is_rebuilt_with_every_current_ban_on_the_next_ban(
        fake: type[FakeNft], caplog: pytest.LogCaptureFixture) -> None:
    """`nft flush ruleset` (a firewall reload) took table, sets and rules: the next ban restores them all."""
    actions, action = jail_actions()
    actions.addBannedIP(["198.51.100.7", "2001:db8::7"])
    settle(action)
    nft_of(action).cmd(f"delete table {TABLE}")
    actions.addBannedIP("198.51.100.8")
    settle(action)
    assert nft_of(action).elements(V4) == {"198.51.100.7", "198.51.100.8"}
    assert nft_of(action).elements(V6) == {"2001:db8::7"}
    assert len(nft_of(action).state["rules"]) == 2
    assert "is gone; restoring it and 3 bans" in caplog.text


def test_the_consistency_check_repairs_unless_told_not_to(fake: type[FakeNft]) -> None:
    """fail2ban calls consistencyCheck() when a banned address shows up again (as for the stock action)."""
    actions, action = jail_actions()
    actions.addBannedIP("198.51.100.7")
    settle(action)
    assert action.consistencyCheck() is True
    nft_of(action).cmd(f"delete table {TABLE}")
    assert action.consistencyCheck(lambda: False) is False
    assert not nft_of(action).state["table"]
    assert action.consistencyCheck() is True
    assert nft_of(action).elements(V4) == {"198.51.100.7"}
