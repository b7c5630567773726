"""What the tests read from `fail2ban-client` output: one parser per output (issue 13, item 7).

Used by the e2e jail tests (tests/e2e/test_jail_ban.py, test_migrate.py) and the booted-root
package story (tests/package/test_package_systemd.py), which run the client in different places.
"""

from __future__ import annotations

import re

# `get <jail> banip --with-time`: "ADDRESS \tBANNED_AT + BANTIME = ENDS_AT" per line (-1: permanent).
_WITH_TIME = re.compile(r"^(\S+)\s+(.*\+\s+(-?\d+)\s+=.*)$")


def banned_with_time(out: str) -> dict[str, str]:
    """Address -> the rest of its line (ban start, bantime and end as fail2ban prints them)."""
    return {m.group(1): m.group(2) for m in map(_WITH_TIME.match, out.splitlines()) if m}


def ban_times(out: str) -> dict[str, int]:
    """Address -> its bantime in seconds (-1: permanent)."""
    return {m.group(1): int(m.group(3)) for m in map(_WITH_TIME.match, out.splitlines()) if m}
