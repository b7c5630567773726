# Fail2Ban action (Python) for the jail [portsentry]: nftables bans without a fork per ban.
#
# The stock `nftables[type=allports]` action runs a shell and `nft` for every ban
# (about 100 bans/s on 2 cores); a spoofed flood outruns it and a real scanner's
# ban waits at the back of the queue.  This action talks to the kernel through
# libnftables in fail2ban's own process (Debian's python3-nftables, module
# `nftables`), no fork at all, and batched: ban() only queues the address; a
# committer thread adds everything queued so far in ONE nft transaction (it waits
# batch_delay, 5 ms, after the first queued address to collect the rest).  Under a
# flood the batch grows by itself; alone, an address is in the set about 5 ms after
# fail2ban's "Ban" line.  unban(), flush(), stop() and a reload first wait until
# every queued ban is committed, so nothing overtakes a ban (an unbanip right after a
# banip removes the address).  A failed batch is retried address by address, so one
# bad element cannot keep the others out; every failure is logged.  When the table,
# a set or a rule is gone (`nft flush ruleset`, a firewall reload), the next ban or
# fail2ban's consistency check (a banned address seen again) rebuilds them and re-adds
# every current ban, as the stock action's actioncheck does.
#
# It builds exactly what the stock action builds, so the two are interchangeable
# and everything that names them keeps working (the README, `nft list`, a switch
# back to the stock action):
#
#   table inet f2b-table
#     chain f2b-chain { type filter hook input priority -1; }
#     set addr-set-<name>  { type ipv4_addr; }
#     set addr6-set-<name> { type ipv6_addr; }
#     meta l4proto { tcp, udp } ip saddr @addr-set-<name> reject
#     meta l4proto { tcp, udp } ip6 saddr @addr6-set-<name> reject
#
# Prefix bans (sensor/prefixwatch.py: the jail bans `2001:db8:77::/64` as one ticket)
# go to two more sets, created with their rules on the first prefix ban (so a jail
# that never bans a prefix has exactly the stock action's two rules):
#
#     set net-set-<name>  { type ipv4_addr; flags interval; }
#     set net6-set-<name> { type ipv6_addr; flags interval; }
#     meta l4proto { tcp, udp } ip saddr @net-set-<name> reject
#     meta l4proto { tcp, udp } ip6 saddr @net6-set-<name> reject
#
# Separate sets, because nftables refuses an interval that overlaps an element
# ("interval overlaps with an existing one"): the first address of a rotating /64 is
# usually banned on its own before the /64 is.  The sensor writes prefixes of one
# configured length, so two prefixes in a set do not overlap.  A prefix wider than
# /32 (IPv6) or /16 (IPv4) is refused (logged), whoever asks for it.
#
# Unban (`fail2ban-client set portsentry unbanip`, expiry) deletes the element; a
# restart re-creates sets and rules and fail2ban re-bans its restored tickets
# through ban(); a permanent ban (portsentry-escalate.py, bantime -1) is an
# element like any other, removed only on unban.  Unlike the stock action the
# sets and rules are created at start for both families (the stock action
# creates each family's on its first ban), and a start after a crash reuses the
# table, sets and rules it finds instead of adding a second rule.
#
# Parameters (all optional): name (portsentry), port (0:65535, all ports only),
# protocol (tcp,udp), blocktype (reject), table (f2b-table), table_family (inet),
# chain (f2b-chain), chain_priority (-1), batch_delay (0.005 s, 0..1).
# Written and tested against fail2ban 1.0.2 (Debian 12) and python3-nftables 1.0.6.

import ipaddress
import json
import re
import threading
import time

from fail2ban.server.action import ActionBase

try:
    import nftables
except ImportError:  # pragma: no cover - reported by __init__
    nftables = None

_WORD = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,60}$")
_PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite")
_BLOCKTYPES = ("reject", "drop")
# The jail passes port= (so that banaction can be swapped with the stock action); all ports only.
ALL_PORTS = ("", "0:65535", "1:65535", "all")


def _number(text, kind, low, high, error):
    """``kind(text)`` within [low, high], else raise ``error``."""
    try:
        value = kind(text)
    except ValueError:
        raise error from None
    if not low <= value <= high:
        raise error
    return value


def _has_set(listing, name):
    """Whether ``nft list table`` output holds the set ``name``."""
    return re.search(rf"^\s*set {re.escape(name)} \{{", listing, re.M) is not None


class NftError(RuntimeError):
    """A libnftables command failed."""


class PortsentryNft(ActionBase):
    """Ban and unban through libnftables in-process, in the stock nftables action's table and sets."""

    # The libnftables context class; tests put a recorder here.
    nft_factory = None

    def __init__(self, jail, actname, **params):
        # fail2ban passes the action's name positionally; `name` among params is the
        # jail name of the stock action's [name=...] (the sets are named after it).
        super().__init__(jail, actname)
        if self.nft_factory is None and nftables is None:
            raise RuntimeError("portsentry-nft: python3-nftables is not installed (import nftables failed); "
                               "install it or use banaction = nftables[type=allports]")
        factory = self.nft_factory or nftables.Nftables
        self._nft = factory()
        self._lock = threading.Lock()          # one libnftables call at a time
        self._queue_cond = threading.Condition()  # guards the queue and the counters below
        self._queue = []
        self._queued = 0      # addresses ever queued
        self._done = 0        # of those, committed (or failed and logged)
        self._committer = None
        self._running = False
        self._started = False
        self._nets_ready = False   # the prefix sets and their rules exist
        self._conf = self._parse(**params)

    # -- parameters ---------------------------------------------------------
    @staticmethod
    def _parse(name="portsentry", protocol="tcp,udp", blocktype="reject", table="f2b-table",
               table_family="inet", chain="f2b-chain", chain_priority="-1", port="0:65535",
               batch_delay="0.005", **unknown):
        def bad(key, value, why):
            return ValueError(f"portsentry-nft: {key}={value!r}: {why}")
        if unknown:
            raise ValueError(f"portsentry-nft: unknown parameter(s): {', '.join(sorted(unknown))}")
        for key, value in (("name", name), ("table", table), ("chain", chain)):
            if not _WORD.match(str(value)):
                raise bad(key, value, "not a plain nft name")
        protos = [p.strip() for p in str(protocol).split(",") if p.strip()]
        if not protos or any(p not in _PROTOCOLS for p in protos):
            raise bad("protocol", protocol, f"a comma list of {', '.join(_PROTOCOLS)}")
        if blocktype not in _BLOCKTYPES:
            raise bad("blocktype", blocktype, f"one of {', '.join(_BLOCKTYPES)}")
        if str(port).replace("-", ":").strip() not in ALL_PORTS:
            raise bad("port", port, "this action blocks all ports (0:65535)")
        if table_family != "inet":
            raise bad("table_family", table_family, "only inet (IPv4 and IPv6 in one table)")
        return {
            "delay": _number(batch_delay, float, 0, 1, bad("batch_delay", batch_delay, "seconds, 0 to 1")),
            "table": f"{table_family} {table}", "chain": chain,
            "priority": _number(chain_priority, int, -1000, 1000, bad("chain_priority", chain_priority,
                                                                       "an integer")),
            "sets": {4: f"addr-set-{name}", 6: f"addr6-set-{name}"},
            "nets": {4: f"net-set-{name}", 6: f"net6-set-{name}"},
            "match": f"meta l4proto {{ {', '.join(protos)} }}", "blocktype": blocktype,
        }

    def clearAllParams(self):
        """Part of fail2ban's reload protocol: the new parameters come through reload()."""

    def reload(self, **params):
        """Take the parameters of a `fail2ban-client reload`.

        Without reload() and clearAllParams(), fail2ban 1.0.2 treats a Python action
        as obsolete on a jail reload: it unbans everything through it and drops it.
        Changed names move the current bans into the new sets.
        """
        conf = self._parse(**params)
        if conf == self._conf:
            return
        if not self._started:
            self._conf = conf
            return
        self._drain()
        current = [ticket.getID() for ticket in self._jail.actions.banManager]
        self.stop()
        self._conf = conf
        self.start()
        self._commit(current)

    # -- nft ----------------------------------------------------------------
    def _cmd(self, text):
        with self._lock:
            rc, out, err = self._nft.cmd(text)
        if rc != 0:
            raise NftError(" ".join(str(err or out or "nft failed").split()))
        return out

    def _rules(self):
        """(handle, set name) of the rules in our chain that match one of our sets."""
        conf = self._conf
        with self._lock:
            self._nft.set_json_output(True)
            self._nft.set_handle_output(True)
            try:
                rc, out, _ = self._nft.cmd(f"list chain {conf['table']} {conf['chain']}")
            finally:
                self._nft.set_json_output(False)
                self._nft.set_handle_output(False)
        if rc != 0 or not out:
            return []
        found = []
        for item in json.loads(out).get("nftables", []):
            rule = item.get("rule")
            text = json.dumps(rule.get("expr", [])) if rule else ""
            found += [(rule["handle"], setname) for setname in (*conf["sets"].values(), *conf["nets"].values())
                      if f'"@{setname}"' in text]
        return found

    def start(self):
        """Create table, chain, both sets and their rules (keeping what a crash left behind)."""
        conf = self._conf
        table, chain = conf["table"], conf["chain"]
        self._add_sets(conf["sets"], before=(
            f"add table {table}",
            f"add chain {table} {chain} {{ type filter hook input priority {conf['priority']} ; }}"))
        self._nets_ready = False
        out = self._list_table()
        if any(_has_set(out, name) for name in conf["nets"].values()):
            self._ensure_nets()  # prefix bans from before a crash or reload: keep their sets
        self._started = True
        with self._queue_cond:
            self._running = True
        if self._committer is None or not self._committer.is_alive():
            self._committer = threading.Thread(target=self._commit_loop, name="f2b/portsentry-nft", daemon=True)
            self._committer.start()

    def stop(self):
        """Remove our rules and sets; the table too when no other set is left in it (as the stock action)."""
        self._drain()
        with self._queue_cond:
            self._running = False
            self._queue_cond.notify_all()
        if self._committer is not None:
            self._committer.join(5)
            self._committer = None
        conf = self._conf
        table = conf["table"]
        lines = [f"delete rule {table} {conf['chain']} handle {handle}" for handle, _ in self._rules()]
        out = self._list_table()
        lines += [f"delete set {table} {setname}" for setname in (*conf["sets"].values(), *conf["nets"].values())
                  if _has_set(out, setname)]
        if lines:
            self._cmd("\n".join(lines))
        out = self._list_table()
        if out and not re.search(r"^\s+set\s+", out, re.M):
            self._cmd(f"delete table {table}")
        self._started = False
        self._nets_ready = False

    def _ensure_nets(self):
        """The prefix sets (flags interval) and their rules, once (see the header)."""
        if self._nets_ready:
            return
        self._add_sets(self._conf["nets"], "flags interval ; ")
        self._nets_ready = True

    def _add_sets(self, sets, flags="", before=()):
        """Add the sets (family -> name; ``flags`` for the prefix sets), in one transaction after
        ``before``, then each one's rule if missing."""
        conf = self._conf
        table, chain = conf["table"], conf["chain"]
        self._cmd("\n".join([*before, *(f"add set {table} {setname} {{ type "
                                         f"{'ipv4_addr' if family == 4 else 'ipv6_addr'} ; {flags}}}"
                                         for family, setname in sets.items())]))
        present = {setname for _, setname in self._rules()}
        rules = [f"add rule {table} {chain} {conf['match']} {'ip' if family == 4 else 'ip6'} saddr @{setname} "
                 f"{conf['blocktype']}" for family, setname in sets.items() if setname not in present]
        if rules:
            self._cmd("\n".join(rules))

    def _list_table(self):
        with self._lock:
            rc, out, _ = self._nft.cmd(f"list table {self._conf['table']}")
        return out if rc == 0 else ""

    @staticmethod
    def _address(fid):
        """(address or prefix as text, family, is a prefix); ValueError for anything else (a name).

        A prefix (a ticket of a prefix alert, "2001:db8:77::/64") must have no host bits
        and be /32../127 (IPv6) or /16../31 (IPv4): never a /0 or a /8.
        """
        net = ipaddress.ip_network(str(fid), strict=True)
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address), net.version, False
        if net.prefixlen < (32 if net.version == 6 else 16):
            raise ValueError(f"{fid}: a prefix wider than /{32 if net.version == 6 else 16} is never banned")
        return str(net), net.version, True

    def _elements(self, verb, addresses):
        groups = {}
        for fid in addresses:
            addr, family, is_net = self._address(fid)
            groups.setdefault((family, is_net), []).append(addr)
        conf = self._conf
        if verb == "add" and any(is_net for _, is_net in groups):
            self._ensure_nets()
        return [f"{verb} element {conf['table']} {conf['nets' if is_net else 'sets'][family]} {{ {', '.join(addrs)} }}"
                for (family, is_net), addrs in sorted(groups.items())]

    # -- batching -------------------------------------------------------------
    def _enqueue(self, fid):
        addr, family, _ = self._address(fid)  # refuse a non-address now, in fail2ban's own error log
        with self._queue_cond:
            if not self._running:
                direct = True
            else:
                direct = False
                self._queue.append((addr, family))
                self._queued += 1
                self._queue_cond.notify_all()
        if direct:  # not started (or stopped): nobody would commit it
            self._commit([addr])

    def _commit_loop(self):
        """The committer thread: whatever is queued, one transaction at a time."""
        while True:
            with self._queue_cond:
                while self._running and not self._queue:
                    self._queue_cond.wait()
                if not self._queue and not self._running:
                    return
            if self._conf["delay"]:
                time.sleep(self._conf["delay"])
            with self._queue_cond:
                batch, self._queue = self._queue, []
            try:
                self._commit([addr for addr, _ in batch])
            except Exception as exc:  # never let the committer die: later bans would wait forever
                self._logSys.error("[%s] %d bans failed: %s", self._jail.name, len(batch), exc)
            finally:
                with self._queue_cond:
                    self._done += len(batch)
                    self._queue_cond.notify_all()

    def _commit(self, addresses):
        """Add addresses in one transaction; if that fails, one by one, logging each failure."""
        lines = self._elements("add", addresses)
        if not lines:
            return
        try:
            self._cmd("\n".join(lines))
            return
        except NftError as exc:
            if "No such file or directory" in str(exc) and self._repair():
                return  # the repair re-added every current ban, these included
            if len(addresses) == 1:
                self._logSys.error("[%s] ban of %s failed: %s", self._jail.name, addresses[0], exc)
                return
            self._logSys.warning("[%s] a batch of %d bans failed (%s); adding them one by one",
                                 self._jail.name, len(addresses), exc)
        for addr in addresses:
            try:
                self._cmd("\n".join(self._elements("add", [addr])))
            except NftError as exc:
                self._logSys.error("[%s] ban of %s failed: %s", self._jail.name, addr, exc)

    def _drain(self, timeout=30.0):
        """Wait until every ban queued so far is committed (bounded)."""
        with self._queue_cond:
            target = self._queued
            deadline = time.monotonic() + timeout
            while self._done < target and self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._logSys.error("[%s] %d queued bans not committed after %s s",
                                       self._jail.name, target - self._done, timeout)
                    return
                self._queue_cond.wait(left)

    # -- repair -------------------------------------------------------------
    def _intact(self):
        return len(self._rules()) == len(self._conf["sets"]) + (len(self._conf["nets"]) if self._nets_ready else 0)

    def _repair(self):
        """Table, set or rule gone (`nft flush ruleset`, a firewall reload): rebuild, re-add current bans.

        What the stock action's actioncheck/repair does, without its ban epochs (those
        need every action of the jail to have one; portsentry-escalate.py has none).
        """
        if self._intact():
            return False
        current = [ticket.getID() for ticket in self._jail.actions.banManager]
        self._logSys.error("[%s] nftables table, set or rule of this jail is gone; restoring it and %d bans",
                           self._jail.name, len(current))
        self.start()
        lines = self._elements("add", current)
        if lines:
            self._cmd("\n".join(lines))
        return True

    def consistencyCheck(self, beforeRepair=None):
        """Called by fail2ban when a banned address shows up again (and before a flush fails over)."""
        if self._intact():
            return True
        if beforeRepair is not None and not beforeRepair():
            return False
        self._drain()
        self._repair()
        return True

    # -- fail2ban's action API ----------------------------------------------
    def ban(self, aInfo):
        """Queue the address for the next transaction; an address already in the set is no error."""
        self._enqueue(aInfo["ip"])

    def reban(self, aInfo):
        """Put the address back (after the set was lost); the same as ban()."""
        self._enqueue(aInfo["ip"])

    def unban(self, aInfo):
        """Delete the element once queued bans are in; one already gone (flushed, by hand) is no error."""
        self._drain()
        try:
            self._cmd("\n".join(self._elements("delete", [aInfo["ip"]])))
        except NftError as exc:
            if "No such file or directory" not in str(exc):
                raise
            self._logSys.debug("[%s] %s was not in the set", self._jail.name, aInfo["ip"])

    def flush(self):
        """Empty both sets in one transaction (fail2ban's stop and `unban --all`); True: done."""
        self._drain()
        conf = self._conf
        names = [*conf["sets"].values(), *(conf["nets"].values() if self._nets_ready else ())]
        self._cmd("\n".join(f"flush set {conf['table']} {setname}" for setname in names))
        return True


Action = PortsentryNft
