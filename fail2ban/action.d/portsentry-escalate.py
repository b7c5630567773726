# Fail2Ban action (Python) for the jail [portsentry]: the last rung of the ladder.
#
# An address that the jail bans for the <after>-th time within <window> has its
# current ban turned permanent (bantime -1) in the same jail, and the permanent
# ban is written to fail2ban's database, so it is restored after a restart.
#
# Why in the same jail and not in a separate recidive jail: `fail2ban-client set
# portsentry unbanip IP` acts on one jail only.  With the permanent ban living in
# [portsentry] itself, that one command lifts the ban at every stage of the ladder
# (and, deleting the jail's history of that address, restarts its ladder).  Only
# [portsentry] bans are counted: the count comes from this jail's rows in the
# database, never from other jails.
#
# Keep bantime.maxtime unset in [portsentry]: fail2ban clips restored permanent
# bans to the jail's maxtime when bantime.increment is on.
#
# fail2ban versions: Debian 12 ships 1.0.2 (1.0.2-2), Debian 13 ships 1.1.0
# (1.1.0-8).  What this action relies on is the same in both (compared file by
# file, Debian's fail2ban/server/ of each):
#   - ActionBase(jail, name), self._jail, self._logSys, and the reload protocol
#     (clearAllParams() then reload(**params) on `fail2ban-client reload`):
#     server/action.py identical; server/actions.py only adds a "stats" status.
#   - aInfo["fid"], aInfo["restored"], aInfo["bantime"] (Actions.ActionInfo),
#     Observers.Main.add("call", ...), jail.actions.banManager iteration,
#     BanTicket.getID/getBanTime/setBanTime, MyTime.str2seconds: observer.py
#     and ticket.py differ in comments only; banmanager.py and mytime.py are
#     identical.
#   - jail.database.getBans(jail=, ip=, bantime=) and addBan(jail, ticket):
#     database.py only drops its Python 2 JSON path; same schema.
#   - The restore of a permanent ban after a restart (Jail.restoreCurrentBans,
#     getCurrentBans with correctBanTime = maxtime, hence "keep maxtime unset"):
#     same in both, except the ignoreip check of a restored ticket
#     (1.0.2: filter.inIgnoreIPList(ip); 1.1.0: filter._inIgnoreIPList(ip,
#     ticket)): on both, a permanent ban of an address since put into ignoreip
#     is not restored.
# Around it, 1.1.0 runs on Python 3.12+ (its own compat asyncore/asynchat; the
# systemd backend no longer imports distutils), drops the gamin backend, and
# Debian 13's jail.d/defaults-debian.conf sets banaction = nftables and
# [sshd] backend = systemd (Debian 12's enables [sshd] only); this jail sets
# its banaction and backend itself, so neither default reaches it.
# Proven on each version by tests/package/test_package_systemd.py,
# test_repeat_offender_is_banned_for_good_across_restarts_and_unbanip_lifts_it
# ([bookworm]: 1.0.2, [trixie]: 1.1.0; 2 s, 6 s, permanent, restored after
# `systemctl restart fail2ban`, lifted by unbanip), and by
# tests/fail2ban/test_escalate_action.py on the host (1.0.2, Python 3.11) and
# inside the trixie root by tests/package/test_package_pytest.py (1.1.0, 3.13).
#
# Uses fail2ban's Python action API (ActionBase), the observer queue and the
# database object of the jail (public attributes, no private ones); written and
# tested against fail2ban 1.0.2 (Debian 12) and 1.1.0 (Debian 13).  The firewall ban is a separate
# action: an error here is logged and leaves the ban time-limited, nothing more.

import re

from fail2ban.server.action import ActionBase
from fail2ban.server.mytime import MyTime
from fail2ban.server.observer import Observers

# What fail2ban/jail.d/portsentry.conf ships.
DEFAULT_AFTER = "4"
DEFAULT_WINDOW = "1d"
# MyTime.str2seconds evaluates its input: let through only durations ("1d", "12h 30m").
_DURATION = re.compile(r"[0-9A-Za-z .]+")


def parse_parameters(after, window):
    """(after, window in seconds) or ValueError naming the jail setting and its value."""
    try:
        count = int(str(after).strip())
    except ValueError:
        count = 0
    if count < 1:
        raise ValueError(f"escalate_after = {after!r} is not a whole number >= 1")
    try:
        seconds = MyTime.str2seconds(window) if _DURATION.fullmatch(str(window)) else 0
    except Exception:  # str2seconds raises NameError, SyntaxError, ... on garbage
        seconds = 0
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ValueError(f"escalate_window = {window!r} is not a duration > 0 such as 1d or 12h")
    return count, seconds


class PortsentryEscalate(ActionBase):
    """Turn the <after>-th ban of an address within <window> into a permanent ban."""

    def __init__(self, jail, name, after=DEFAULT_AFTER, window=DEFAULT_WINDOW):
        super().__init__(jail, name)
        self.after, self.window = parse_parameters(DEFAULT_AFTER, DEFAULT_WINDOW)
        self.reload(after, window)

    def clearAllParams(self):
        """Part of fail2ban's reload protocol: the new parameters come through reload()."""

    def reload(self, after=DEFAULT_AFTER, window=DEFAULT_WINDOW):
        """Take the parameters of a `fail2ban-client reload`.

        Without reload() and clearAllParams(), fail2ban 1.0.2 treats a Python
        action as obsolete on a jail reload and drops it from the jail: the
        ladder would silently stop at its last time-limited rung.

        A bad value is logged and the parameters in use are kept (the shipped
        ones when the jail starts): raising here would abort fail2ban's command
        stream, and with it the start or reload of every jail after this one.
        """
        try:
            self.after, self.window = parse_parameters(after, window)
        except ValueError as exc:
            self._logSys.error("[%s] %s: escalation keeps escalate_after = %d, escalate_window = %d s",
                               self._jail.name, exc, self.after, self.window)

    def start(self):
        """Say once if escalation cannot work: it counts bans in fail2ban's database."""
        if self._jail.database is None:
            self._logSys.warning("[%s] fail2ban has no database (dbfile in fail2ban.conf): "
                                 "escalation is off, bans stop at the last time-limited rung",
                                 self._jail.name)

    def stop(self):
        """Nothing to tear down."""

    def ban(self, aInfo):
        """Queue the check after fail2ban's own bookkeeping of this ban."""
        if aInfo["restored"] or aInfo["bantime"] == -1:
            return
        fid = aInfo["fid"]
        # The observer thread records the ban (and its increased bantime) in the
        # database asynchronously; queued after it, our check sees that record and
        # nothing overwrites our bantime afterwards.
        if Observers.Main is not None:
            Observers.Main.add("call", self._escalate, fid)
        else:  # pragma: no cover - fail2ban without observer
            self._escalate(fid)

    def reban(self, aInfo):
        """A re-ban (firewall reload) is not a new ban: count nothing."""

    def unban(self, aInfo):
        """Nothing to undo: the ban action removes the firewall entry."""

    def _ticket(self, fid):
        for ticket in self._jail.actions.banManager:
            if ticket.getID() == fid:
                return ticket
        return None

    def _escalate(self, fid):
        try:
            database = self._jail.database
            ticket = self._ticket(fid)
            if database is None or ticket is None or ticket.getBanTime() == -1:
                return
            records = database.getBans(jail=self._jail, ip=fid)
            since = MyTime.time() - self.window
            bans = sum(1 for record in records if record.getTime() > since)
            if bans < self.after:
                return
            # `unbanip` runs in another thread: it deletes the address's records from
            # the database first, then takes the ticket out of the ban list.
            if self._ticket(fid) is not ticket:
                self._logSys.info("[%s] %s was unbanned meanwhile: not made permanent",
                                  self._jail.name, fid)
                return
            previous = ticket.getBanTime()
            ticket.setBanTime(-1)
            try:
                database.addBan(self._jail, ticket)
            except Exception as exc:  # e.g. sqlite3.OperationalError: database is locked
                # Not recorded, so not permanent: a restart would restore the ban
                # with its old time anyway; keep the ban list and database in step.
                ticket.setBanTime(previous)
                self._logSys.error("[%s] escalation of %s failed (%s): ban time stays %s s",
                                   self._jail.name, fid, exc,
                                   ticket.getBanTime(self._jail.actions.getBanTime()))
                return
            # Lifted between the check and the write?  Then the records we read are
            # gone (our write adds one to them; counted without the window, which
            # moves with the clock) or the ticket is: take the write back, or a
            # restart would restore a permanent ban nobody holds.
            if (self._ticket(fid) is not ticket
                    or len(database.getBans(jail=self._jail, ip=fid)) <= len(records)):
                ticket.setBanTime(previous)
                database.delBan(self._jail, fid)
                self._logSys.info("[%s] %s was unbanned meanwhile: permanent record removed",
                                  self._jail.name, fid)
                return
            self._logSys.notice("[%s] Permanent ban %s: %d bans within %s s",
                                self._jail.name, fid, bans, self.window)
        except Exception as exc:  # never break the jail's action thread
            self._logSys.error("[%s] escalation of %s failed: %s", self._jail.name, fid, exc)


Action = PortsentryEscalate
