"""One home for the paths the tests and their helpers share (issue 13, item 7).

tests/ is on sys.path under pytest (tests/conftest.py is the rootdir's conftest),
so any test or helper imports these as ``from repopaths import REPO``.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
ROOTS = TESTS / "roots"          # recorded PortSentry hosts (etc/portsentry/...)
PACK = REPO / "fail2ban"         # our jail pack: filter.d, jail.d, action.d
FAIL2BAN_ETC = Path("/etc/fail2ban")  # Debian's fail2ban config dir (read through tests/pristine.py only)
