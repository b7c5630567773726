"""fail2ban/action.d/portsentry-escalate.py against fail2ban's ActionBase contract.

A unittest module in the style of fail2ban's own tests/actionstestcase.py, with its
utilities: DummyJail (fail2ban.tests.dummyjail), LogCaptureTestCase and initTests
(fail2ban.tests.utils), the action loaded and driven by fail2ban's Actions: the Python
action loader and its ActionBase check, init options, the actions thread's start/stop,
ban/unban with the aInfo fail2ban builds, and the reload protocol.

Run by tests/fail2ban/test_upstream_harness.py in its own process (initTests changes the
time zone, time.sleep and fail2ban's clock for the whole process), under the system
python3 of a Debian root:  python3 f2b_action_contract.py ACTION_FILE
"""

import os
import sys
import unittest

from fail2ban.server.action import ActionBase
from fail2ban.server.actions import Actions
from fail2ban.server.database import Fail2BanDb
from fail2ban.server.mytime import MyTime
from fail2ban.server.observer import Observers, ObserverThread
from fail2ban.server.ticket import BanTicket, FailTicket
from fail2ban.server.utils import Utils
from fail2ban.tests.dummyjail import DummyJail
from fail2ban.tests.utils import LogCaptureTestCase, initTests

ACTION = ""  # set by main() from the command line
ADDR = "198.51.100.7"
NAME = "portsentry-escalate"


class EscalateActionContract(LogCaptureTestCase):
    """What fail2ban's actions machinery requires of a Python action, and gets from ours."""

    def setUp(self):
        super().setUp()
        self.jail = DummyJail(name="portsentry")
        self.actions = self.jail.actions
        # fail2ban-server's observer (as fail2ban's observertestcase sets it up): it records
        # each ban in the database, then runs what the action queued after it
        self.observer = ObserverThread()
        Observers.Main = self.observer
        self.observer.start()

    def tearDown(self):
        self.observer.stop()
        Observers.Main = None
        super().tearDown()

    def add(self, **opts):
        self.actions.add(NAME, ACTION, opts)
        return self.actions[NAME]

    def test_loaded_by_fail2bans_python_action_loader(self):
        module = Actions._load_python_module(ACTION)  # raises unless Action is an ActionBase
        self.assertTrue(issubclass(module.Action, ActionBase))
        action = self.add(after="3", window="2h")
        self.assertIsInstance(action, ActionBase)
        self.assertEqual((action.after, action.window), (3, 7200))
        self.assertEqual((self.actions.add("defaults", ACTION, {}), self.actions["defaults"].after),
                         (None, 4))
        # as fail2ban's testAddActionPython: unknown options are refused at load
        self.assertRaises(TypeError, self.actions.add, "extra", ACTION, {"after": "3", "bogus": "1"})
        # a bad value never aborts fail2ban's start: logged, and the shipped ladder is used
        self.actions.add("zero", ACTION, {"after": "0"})
        self.assertEqual(self.actions["zero"].after, 4)
        self.assertLogged("escalation keeps escalate_after = 4")

    def test_started_and_stopped_by_the_actions_thread(self):
        self.add(after="3", window="1h")
        self.actions.start()
        self.assertTrue(Utils.wait_for(lambda: self.actions.active, 3))
        self.actions.stop()
        self.actions.join()
        self.assertNotLogged("Failed to start", "Failed to stop", all=True)

    def _database(self):
        database = Fail2BanDb(":memory:")
        self.addCleanup(database.close)
        self.jail.database = database
        database.addJail(self.jail)
        return database

    def _ban(self, restored=False):
        ticket = FailTicket(ADDR, MyTime.time())
        ticket.restored = restored
        self.jail.putFailTicket(ticket)
        self.actions._Actions__checkBan()  # as fail2ban's testBanActionsAInfo
        self.assertTrue(self.observer.wait_empty(5))
        return self.actions.banManager.getTicketByID(ADDR)

    def test_ban_with_fail2bans_ainfo_makes_the_nth_ban_permanent(self):
        database = self._database()
        self.add(after="3", window="1h")
        for ago in (1800, 900):  # two earlier bans of this jail
            database.addBan(self.jail, BanTicket(ADDR, MyTime.time() - ago))
        ticket = self._ban()
        self.assertNotLogged("Failed to execute ban", "escalation of", all=True)
        self.assertLogged(f"Permanent ban {ADDR}: 3 bans within 3600 s")
        self.assertEqual(ticket.getBanTime(), -1)
        restored = database.getCurrentBans(jail=self.jail, ip=ADDR, correctBanTime=False)
        self.assertEqual(restored.getBanTime(), -1)  # what a restart restores
        self.actions._Actions__flushBan()
        self.assertNotLogged("Failed to execute unban", all=True)

    def test_first_ban_and_restored_bans_stay_time_limited(self):
        database = self._database()
        self.add(after="2", window="1h")
        self.assertNotEqual(self._ban().getBanTime(), -1)
        self.actions._Actions__flushBan()
        self.assertEqual(len(database.getBans(jail=self.jail, ip=ADDR)), 1)  # the observer recorded it
        database.addBan(self.jail, BanTicket(ADDR, MyTime.time() - 60))
        self.assertNotEqual(self._ban(restored=True).getBanTime(), -1)  # 3 bans, but restored
        self.assertNotLogged("Failed to execute", "Permanent ban", "escalation of", all=True)

    def test_kept_and_updated_by_a_jail_reload(self):
        action = self.add(after="3", window="1h")
        self.actions.reload(begin=True)
        self.actions.add(NAME, ACTION, {"after": "5", "window": "3h"}, reload=True)
        self.actions.reload(begin=False)
        self.assertIs(self.actions[NAME], action)  # not dropped as obsolete, not re-created
        self.assertEqual((action.after, action.window), (5, 3 * 3600))


def main():
    global ACTION
    ACTION = os.path.abspath(sys.argv[1])
    initTests(None)
    program = unittest.main(argv=[sys.argv[0], "-v"], exit=False)
    result = program.result
    sys.exit(0 if result.wasSuccessful() and result.testsRun == 5 else 1)


if __name__ == "__main__":
    main()
