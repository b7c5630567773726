"""Which journal entries come from the sensor: the trust rule (doc/DESIGN.md §2) as one check.

fail2ban's jail (``fail2ban-config --journalmatch``) and ``report``/``status`` read
only entries matching one ``FIELD=value`` that journald sets from the sender's
credentials; :func:`check_journalmatch` refuses every other field with the reason.
"""

from __future__ import annotations

import re


class JournalMatchError(ValueError):
    """A match that does not prove an entry comes from the sensor: one line, exit 2."""


# Journal fields that name the sensor and nothing a local user can start: journald sets
# them from the sender's credentials, and only root names a system unit or gives out a
# UID (a PID belongs to one running process).  Field -> the values it takes.
TRUSTED_FIELDS = {
    "_SYSTEMD_UNIT": re.compile(r"[A-Za-z0-9:_.@\\-]+"),
    "_UID": re.compile(r"\d+"),
    "_PID": re.compile(r"\d+"),
}
_TRUSTED_LIST = "_SYSTEMD_UNIT=, _UID= or _PID="
# Why the other fields do not: (field or prefix, reason).
_FORGEABLE = (
    ("_COMM", "any local user can run a program under that name"),
    ("_EXE", "any local user can run that program"),
    ("_CMDLINE", "any local user can run that command line"),
    ("_SYSTEMD_USER_UNIT", "users name their own units"),
    ("_SYSTEMD_", "users run their own units and scopes"),
    ("_TRANSPORT", "every local program's entries have one"),
    ("_", "it is shared with programs a local user can start"),
)
_FIELD_VALUE = re.compile(r"([A-Za-z0-9_]+)=(.*)", re.DOTALL)


def check_journalmatch(match: str) -> None:
    """Raise JournalMatchError unless ``match`` is FIELD=value on a field in TRUSTED_FIELDS."""
    shown = match.encode("unicode_escape").decode("ascii")
    parsed = _FIELD_VALUE.fullmatch(match)
    if parsed is None:
        raise JournalMatchError(f"--journalmatch: '{shown}' is not FIELD=value; use {_TRUSTED_LIST}")
    name, value = parsed.groups()
    if name in TRUSTED_FIELDS:
        if not TRUSTED_FIELDS[name].fullmatch(value):
            what = "a number" if name != "_SYSTEMD_UNIT" else "a unit name such as portsentry-sensor.service"
            raise JournalMatchError(f"--journalmatch: '{shown}': {name}= takes {what}; use {_TRUSTED_LIST}")
        return
    if not name.startswith("_"):
        reason = "the sending program sets it itself, so any local user can send a forged one"
    else:
        reason = next(why for prefix, why in _FORGEABLE if name == prefix or prefix.endswith("_")
                      and name.startswith(prefix))
    raise JournalMatchError(f"--journalmatch: {name}= does not prove an entry comes from the sensor "
                            f"({reason}); use {_TRUSTED_LIST}")
