"""fail2ban's own record of its bans, read-only: the ``bips`` table of its sqlite database.

One row per address and jail, the latest ban (``report`` and ``status`` show it next to
the sensor's alerts, :mod:`sensor.activity`).  Where the database is comes from
fail2ban's configuration (``dbfile``).
"""

from __future__ import annotations

import configparser
import glob
import os
import sqlite3
import urllib.parse
from dataclasses import dataclass, field

from sensor.addr import canonical_or_none

DEFAULT_JAIL = "portsentry"
FAIL2BAN_CONF = "/etc/fail2ban"
DEFAULT_DBFILE = "/var/lib/fail2ban/fail2ban.sqlite3"


@dataclass(frozen=True)
class Ban:
    """fail2ban's latest ban of one address in the jail (its ``bips`` row)."""

    address: str
    banned_at: int
    bantime: int
    rung: int

    @property
    def permanent(self) -> bool:
        return self.bantime < 0

    @property
    def ends_at(self) -> int | None:
        return None if self.permanent else self.banned_at + self.bantime

    def active(self, now: float) -> bool:
        end = self.ends_at
        return end is None or end > now


@dataclass
class Bans:
    """The jail's bans from fail2ban's database, or why they could not be read."""

    database: str
    jail: str
    by_address: dict[str, Ban] = field(default_factory=dict)
    error: str = ""


def default_dbfile(confdir: str = FAIL2BAN_CONF) -> str:
    """fail2ban's ``dbfile``: fail2ban.conf, then fail2ban.d/*.conf, fail2ban.local, fail2ban.d/*.local."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    names = [f"{confdir}/fail2ban.conf", *sorted(glob.glob(f"{confdir}/fail2ban.d/*.conf")),
             f"{confdir}/fail2ban.local", *sorted(glob.glob(f"{confdir}/fail2ban.d/*.local"))]
    try:
        parser.read(names, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        return DEFAULT_DBFILE
    return parser.get("Definition", "dbfile", fallback=DEFAULT_DBFILE).strip() or DEFAULT_DBFILE


def read_bans(database: str, jail: str = DEFAULT_JAIL) -> Bans:
    """Every ``bips`` row of ``jail``, read-only; a missing or unreadable database is an error note."""
    bans = Bans(database=database, jail=jail)
    if database == ":none:":
        bans.error = "fail2ban keeps no database (dbfile = :none:)"
        return bans
    if not os.path.exists(database):
        bans.error = f"{database}: no such file (is fail2ban installed and started?)"
        return bans
    uri = f"file:{urllib.parse.quote(database)}?mode=ro"
    try:
        connection = sqlite3.connect(uri, uri=True, timeout=5)
        try:
            rows = connection.execute(
                "SELECT ip, timeofban, bantime, bancount FROM bips WHERE jail = ?", (jail,)).fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        bans.error = f"{database}: cannot read fail2ban's bans: {exc}"
        return bans
    for ip, banned_at, bantime, bancount in rows:
        address = normalize(str(ip)) or str(ip)
        bans.by_address[address] = Ban(address, int(banned_at), int(bantime), int(bancount))
    return bans


def normalize(address: str) -> str | None:
    """The address as the sensor writes it (:func:`sensor.addr.canonical_or_none`), or None if it is not one."""
    return canonical_or_none(address)
