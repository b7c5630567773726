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
# tests/filter/test_escalate_action.py on the host (1.0.2, Python 3.11) and
# inside the trixie root by tests/package/test_package_pytest.py (1.1.0, 3.13).
#
# Uses fail2ban's Python action API (ActionBase), the observer queue and the
# database object of the jail (public attributes, no private ones); written and
# tested against fail2ban 1.0.2 (Debian 12) and 1.1.0 (Debian 13).  The firewall ban is a separate
# action: an error here is logged and leaves the ban time-limited, nothing more.

from fail2ban.server.action import ActionBase
from fail2ban.server.mytime import MyTime
from fail2ban.server.observer import Observers


class PortsentryEscalate(ActionBase):
    """Turn the <after>-th ban of an address within <window> into a permanent ban."""

    def __init__(self, jail, name, after="4", window="1d"):
        super().__init__(jail, name)
        self.reload(after, window)

    def clearAllParams(self):
        """Part of fail2ban's reload protocol: the new parameters come through reload()."""

    def reload(self, after="4", window="1d"):
        """Take the parameters of a `fail2ban-client reload`.

        Without reload() and clearAllParams(), fail2ban 1.0.2 treats a Python
        action as obsolete on a jail reload and drops it from the jail: the
        ladder would silently stop at its last time-limited rung.
        """
        after, window = int(after), MyTime.str2seconds(window)
        if after < 1 or window <= 0:
            raise ValueError("portsentry-escalate: after must be >= 1 and window > 0")
        self.after, self.window = after, window

    def start(self):
        """Nothing to set up: the firewall is the ban action's business."""

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
            bans = len(database.getBans(jail=self._jail, ip=fid, bantime=self.window))
            if bans < self.after:
                return
            ticket.setBanTime(-1)
            database.addBan(self._jail, ticket)
            self._logSys.notice("[%s] Permanent ban %s: %d bans within %s s",
                                self._jail.name, fid, bans, self.window)
        except Exception as exc:  # never break the jail's action thread
            self._logSys.error("[%s] escalation of %s failed: %s", self._jail.name, fid, exc)


Action = PortsentryEscalate
