"""fail2ban/action.d/portsentry-escalate.py with fail2ban's own database and ban list.

The e2e tests show the ladder end to end; this pins the counting rules without a
server: only this jail's bans within the window count, the Nth one turns the
current ticket permanent and the database says so (what a restart restores),
restored tickets and re-bans change nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
from ci import in_ci

if importlib.util.find_spec("fail2ban") is None:
    if in_ci():
        raise ImportError("fail2ban is not installed in CI (tools/setup-env installs it)")
    pytest.skip("fail2ban is not installed (tools/setup-env installs it)", allow_module_level=True)
from f2b_harness import load_action_file

from fail2ban.server.banmanager import BanManager
from fail2ban.server.database import Fail2BanDb
from fail2ban.server.mytime import MyTime
from fail2ban.server.ticket import BanTicket

ACTION = Path(__file__).resolve().parents[2] / "fail2ban" / "action.d" / "portsentry-escalate.py"
ADDR = "198.51.100.7"


def load_action() -> ModuleType:
    """Import the action file as fail2ban does (by path), leaving no __pycache__ in the pack."""
    return load_action_file(ACTION, "portsentry_escalate")


class FakeJail:
    """What the action touches of a jail: name, database, actions.banManager, getBanTime()."""

    def __init__(self, name: str, database: Fail2BanDb) -> None:
        self.name = name
        self.database = database
        self.actions = SimpleNamespace(banManager=BanManager(), getBanTime=lambda: 600)
        self.actions.banManager.setBanTime(600)


@pytest.fixture
def db(tmp_path: Path) -> Fail2BanDb:
    """A fresh fail2ban sqlite database."""
    return Fail2BanDb(str(tmp_path / "f2b.sqlite3"))


def ban(jail: FakeJail, action: Any, when: float, restored: bool = False) -> BanTicket:
    """What fail2ban does for one ban: ban list, database record, then our action."""
    ticket = BanTicket(ADDR, when)
    ticket.restored = restored
    jail.actions.banManager.addBanTicket(ticket)
    jail.database.addJail(jail)
    jail.database.addBan(jail, ticket)
    info = {"restored": 1 if restored else 0, "bantime": ticket.getBanTime(600), "fid": ADDR}
    action.ban(info)
    return ticket


def unban(jail: FakeJail) -> None:
    """The ban expired: out of the ban list (the database keeps its record)."""
    jail.actions.banManager.getTicketByID(ADDR)


def test_third_ban_within_the_window_is_permanent_and_recorded(db: Fail2BanDb) -> None:
    module = load_action()
    jail = FakeJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="3", window="1h")
    now = MyTime.time()
    for offset in (-1200, -600):
        assert ban(jail, action, now + offset).getBanTime() is None
        unban(jail)
    ticket = ban(jail, action, now)
    assert ticket.getBanTime() == -1
    restored = db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False)
    assert restored is not None and restored.getBanTime() == -1


def test_bans_older_than_the_window_do_not_count(db: Fail2BanDb) -> None:
    module = load_action()
    jail = FakeJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="3", window="1h")
    now = MyTime.time()
    for offset in (-7300, -7200):
        ban(jail, action, now + offset)
        unban(jail)
    assert ban(jail, action, now).getBanTime() is None


def test_other_jails_do_not_count(db: Fail2BanDb) -> None:
    module = load_action()
    sshd = FakeJail("sshd", db)
    jail = FakeJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="2", window="1h")
    other = module.Action(sshd, "portsentry-escalate", after="99", window="1h")
    ban(sshd, other, MyTime.time() - 60)
    assert ban(jail, action, MyTime.time()).getBanTime() is None


def test_restored_tickets_and_rebans_change_nothing(db: Fail2BanDb) -> None:
    module = load_action()
    jail = FakeJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="1", window="1h")
    assert ban(jail, action, MyTime.time(), restored=True).getBanTime() is None
    action.reban({"restored": 0, "bantime": 600, "fid": ADDR})
    assert next(iter(jail.actions.banManager)).getBanTime() is None


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_bad_parameters_at_start_are_logged_and_the_shipped_ones_used(
        caplog: pytest.LogCaptureFixture) -> None:
    """Raising here would abort fail2ban's start command stream: jails after this one would not start."""
    module = load_action()
    jail = SimpleNamespace(name="portsentry", database=None)
    with caplog.at_level(logging.INFO, logger="fail2ban"):
        action = module.Action(jail, "portsentry-escalate", after="0", window="1h")
    assert (action.after, action.window) == (4, 86400)
    assert any("escalate_after" in e and "'0'" in e for e in _errors(caplog)), _errors(caplog)


@pytest.mark.parametrize(("after", "window", "bad"), [
    ("0", "1h", "'0'"), ("-2", "1h", "'-2'"), ("four", "1h", "'four'"),
    ("3", "0", "'0'"), ("3", "forever", "'forever'"), ("3", "1x", "'1x'"), ("3", "-1", "'-1'")])
def test_bad_reload_parameters_are_logged_and_the_previous_ones_kept(
        after: str, window: str, bad: str, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 5: a bad value in `fail2ban-client reload` must not raise (other jails' reload)."""
    module = load_action()
    jail = SimpleNamespace(name="portsentry", database=None)
    action = module.Action(jail, "portsentry-escalate", after="2", window="2h")
    with caplog.at_level(logging.INFO, logger="fail2ban"):
        action.reload(after=after, window=window)
    assert (action.after, action.window) == (2, 7200)
    assert any(bad in e and "portsentry" in e for e in _errors(caplog)), _errors(caplog)
    action.reload(after="5", window="1d")
    assert (action.after, action.window) == (5, 86400)


def test_reload_through_fail2ban_actions_with_a_bad_value(
        db: Fail2BanDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """fail2ban's own reload protocol (Actions.add(reload=True), Actions.reload) with after=0."""
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    jail = RealJail("portsentry", db)
    jail.actions.add("portsentry-escalate", str(ACTION), {"after": "3", "window": "1h"})
    jail.actions.reload(begin=True)
    jail.actions.add("portsentry-escalate", str(ACTION), {"after": "0", "window": "1h"}, reload=True)
    jail.actions.reload(begin=False)
    action = jail.actions["portsentry-escalate"]
    assert (action.after, action.window) == (3, 3600)


def test_without_a_database_escalation_is_off_and_the_log_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    module = load_action()
    jail = SimpleNamespace(name="portsentry", database=None,
                           actions=SimpleNamespace(banManager=BanManager()))
    action = module.Action(jail, "portsentry-escalate", after="1", window="1h")
    with caplog.at_level(logging.INFO, logger="fail2ban"):
        action.start()
        for _ in range(3):
            action.ban({"restored": 0, "bantime": 600, "fid": ADDR})
    said = [r.getMessage() for r in caplog.records if "escalation is off" in r.getMessage()]
    assert len(said) == 1 and "database" in said[0], said


def test_no_database_no_escalation() -> None:
    module = load_action()
    jail = SimpleNamespace(name="portsentry", database=None,
                           actions=SimpleNamespace(banManager=BanManager()))
    action = module.Action(jail, "portsentry-escalate", after="1", window="1h")
    ticket = BanTicket(ADDR, MyTime.time())
    jail.actions.banManager.addBanTicket(ticket)
    action.ban({"restored": 0, "bantime": 600, "fid": ADDR})
    assert ticket.getBanTime() is None


class RealJail:
    """A jail with fail2ban's real Actions (ban list, `unbanip`) and database; no threads started."""

    def __init__(self, name: str, database: Fail2BanDb) -> None:
        from fail2ban.server.actions import Actions
        self.name = name
        self.database = database
        self.actions = Actions(self)
        self.actions.setBanTime(600)

    def unbanip(self, ip: str) -> None:
        """What `fail2ban-client set <jail> unbanip <ip>` does in the server."""
        self.actions.removeBannedIP(ip)


def _escalating_jail(db: Fail2BanDb) -> tuple[RealJail, Any]:
    """A jail whose next ban of ADDR is the escalate_after-th (after=2: one ban already counted)."""
    module = load_action()
    jail = RealJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="2", window="1h")
    ban(jail, action, MyTime.time() - 900)  # type: ignore[arg-type]
    unban(jail)  # type: ignore[arg-type]
    return jail, action


def test_unbanip_between_count_and_write_leaves_no_permanent_record(
        db: Fail2BanDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 3: the ban is lifted after the action counted, before it wrote -1."""
    jail, action = _escalating_jail(db)
    real_get_bans = db.getBans

    def count_then_unban(**kwargs: Any) -> Any:
        found = real_get_bans(**kwargs)
        jail.unbanip(ADDR)
        monkeypatch.setattr(db, "getBans", real_get_bans)
        return found

    monkeypatch.setattr(db, "getBans", count_then_unban)
    ban(jail, action, MyTime.time())  # type: ignore[arg-type]
    assert jail.actions.banManager.getTicketByID(ADDR) is None
    assert db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False) in (None, [])
    assert db.getBans(jail=jail, ip=ADDR) == []


def test_unbanip_racing_the_write_leaves_no_permanent_record(
        db: Fail2BanDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """unbanip deletes the database record first, then the ticket: the write lands in between."""
    jail, action = _escalating_jail(db)
    real_add_ban = db.addBan
    calls = []

    def delete_then_write(jail_: Any, ticket: Any) -> None:
        calls.append(ticket.getBanTime())
        if ticket.getBanTime() == -1:  # our write; unbanip has deleted the records meanwhile
            db.delBan(jail_, ADDR)
        real_add_ban(jail_, ticket)

    monkeypatch.setattr(db, "addBan", delete_then_write)
    ban(jail, action, MyTime.time())  # type: ignore[arg-type]
    assert -1 in calls
    jail.actions.banManager.getTicketByID(ADDR)  # ... and unbanip takes the ticket out of the list
    assert db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False) in (None, [])


def test_escalation_without_a_race_still_writes_the_permanent_record(db: Fail2BanDb) -> None:
    """The same set-up as the race tests, without the unban: the second ban is permanent."""
    jail, action = _escalating_jail(db)
    assert ban(jail, action, MyTime.time()).getBanTime() == -1  # type: ignore[arg-type]
    restored = db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False)
    assert restored is not None and restored.getBanTime() == -1


def test_failed_database_write_restores_the_previous_ban_time(
        db: Fail2BanDb, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 4: `database is locked` on the permanent write leaves the ban as it was."""
    import sqlite3
    jail, action = _escalating_jail(db)
    real_add_ban = db.addBan

    def locked(jail_: Any, ticket: Any) -> None:
        if ticket.getBanTime() == -1:
            raise sqlite3.OperationalError("database is locked")
        real_add_ban(jail_, ticket)

    monkeypatch.setattr(db, "addBan", locked)
    ticket = BanTicket(ADDR, MyTime.time())
    ticket.setBanTime(3600)  # what bantime.increment gave this (second) ban
    jail.actions.banManager.addBanTicket(ticket)
    db.addBan(jail, ticket)
    with caplog.at_level(logging.INFO, logger="fail2ban"):
        action.ban({"restored": 0, "bantime": 3600, "fid": ADDR})
    assert ticket.getBanTime() == 3600
    assert jail.actions.banManager.getTicketByID(ADDR) is ticket
    record = db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False)
    assert record is not None and record.getBanTime() == 3600
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("database is locked" in e and ADDR in e and "3600" in e for e in errors), errors


def test_a_ban_leaving_the_window_during_the_write_is_not_taken_for_an_unban(
        db: Fail2BanDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race check must not count twice against a moving clock: a ban at the window's edge
    that falls out of it while the action writes is not a lifted ban."""
    module = load_action()
    jail = RealJail("portsentry", db)
    action = module.Action(jail, "portsentry-escalate", after="2", window="1h")
    now = 1_800_000_000
    monkeypatch.setattr(MyTime, "myTime", now)
    ban(jail, action, now - 3599)  # type: ignore[arg-type]
    unban(jail)  # type: ignore[arg-type]
    real_add_ban = db.addBan

    def slow_write(jail_: Any, ticket: Any) -> None:
        real_add_ban(jail_, ticket)
        if ticket.getBanTime() == -1:
            MyTime.myTime = now + 5  # the first ban is now older than the window

    monkeypatch.setattr(db, "addBan", slow_write)
    ticket = ban(jail, action, now)  # type: ignore[arg-type]
    assert ticket.getBanTime() == -1
    record = db.getCurrentBans(jail=jail, ip=ADDR, correctBanTime=False, fromtime=now + 5)
    assert record is not None and record.getBanTime() == -1
