"""The escalation action under fail2ban's own action test utilities (issue 17, item 3).

tests/fail2ban/f2b_action_contract.py drives fail2ban/action.d/portsentry-escalate.py the
way fail2ban's tests/actionstestcase.py drives Python actions: loaded by fail2ban's
loader (ActionBase check), init options, the actions thread's start/stop, ban/unban
with the aInfo fail2ban builds and fail2ban's observer recording the ban, and the jail
reload protocol.  It runs in its own process (fail2ban's initTests changes time zone and
clock process-wide), under the system python3.  On Debian 13's fail2ban 1.1.0 it runs inside a trixie
root (tests/package/test_package_pytest.py runs tests/fail2ban there).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ci import skip_or_fail
from f2b_harness import HarnessRun, run_action_contract

ACTION = Path(__file__).resolve().parents[2] / "fail2ban" / "action.d" / "portsentry-escalate.py"
CASES = 5


def contract(work: Path, action: Path = ACTION, root: Path | None = None) -> HarnessRun:
    if root is None and not Path("/usr/lib/python3/dist-packages/fail2ban/tests/dummyjail.py").exists():
        skip_or_fail("fail2ban (with its tests) is not installed (tools/setup-env installs it)")
    return run_action_contract(work, action, root=root)


def assert_contract_holds(run: HarnessRun) -> None:
    assert run.returncode == 0, run.output[-6000:]
    assert f"\nRan {CASES} tests in " in run.output and "\nOK" in run.output, run.output[-3000:]


def test_action_keeps_fail2bans_action_contract(tmp_path: Path) -> None:
    assert_contract_holds(contract(tmp_path))


# Defects a future edit could bring in, and the contract case that must catch each.
DEFECTS = {
    # without clearAllParams fail2ban 1.0.2 drops the action from the jail on reload
    "no-clearallparams": ("def clearAllParams(self):", "def _clearAllParams(self):",
                          "test_kept_and_updated_by_a_jail_reload"),
    "wrong-ainfo-key": ('if aInfo["restored"] or', 'if aInfo["is_restored"] or',
                        "test_ban_with_fail2bans_ainfo_makes_the_nth_ban_permanent"),
    "off-by-one": ("if bans < self.after:", "if bans <= self.after:",
                   "test_ban_with_fail2bans_ainfo_makes_the_nth_ban_permanent"),
    "escalates-restored": ('if aInfo["restored"] or aInfo["bantime"] == -1:', 'if aInfo["bantime"] == -1:',
                           "test_first_ban_and_restored_bans_stay_time_limited"),
    "not-an-action": ("Action = PortsentryEscalate", "Action = object",
                      "test_loaded_by_fail2bans_python_action_loader"),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_contract_catches_a_broken_action(tmp_path: Path, defect: str) -> None:
    """The contract run is not vacuous: a copy of the action with one defect fails it."""
    old, new, case = DEFECTS[defect]
    text = ACTION.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"defect {defect}: {old!r} not found once in {ACTION.name}"
    broken = tmp_path / "broken" / ACTION.name
    broken.parent.mkdir()
    broken.write_text(text.replace(old, new), encoding="utf-8")
    run = contract(tmp_path / "work", action=broken)
    assert run.returncode != 0, run.output[-3000:]
    assert f"{case} (" in run.output and ("FAIL: " + case in run.output or "ERROR: " + case in run.output), \
        run.output[-6000:]
