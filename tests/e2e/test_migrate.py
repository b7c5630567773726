"""Coming from PortSentry: its never-expiring blocks are handed to fail2ban and removed.

The story: a host ran PortSentry with the how-to setup (KILL_ROUTE reject
routes, KILL_HOSTS_DENY, KILL_RUN_CMD inserting iptables DROP + LOG rules, and
an nftables variant).  ``migrate-bans`` first only prints the plan and changes
nothing; with ``--apply`` the recent addresses are banned by the running
fail2ban jail with an expiry, every block PortSentry made is gone, and the
rules PortSentry did not make are untouched.  A second run finds nothing to do.
Everything happens in the lab's victim namespace; files live under a temp root.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from f2b import Fail2Ban
from f2bclient import banned_with_time
from lab import REPO_ROOT, SYSTEM_PYTHON, Journal, Lab

pytestmark = pytest.mark.e2e

RECENT, RECENT_UDP, OLD, IGNORED = "203.0.113.10", "203.0.113.12", "203.0.113.11", "198.51.100.20"
RECENT6 = "2001:db8:ff::10"  # PortSentry 2.0 records IPv6 too
FOREIGN = "192.0.2.99"  # blocked by the admin, never recorded by PortSentry
FOREIGN_ROUTED = "203.0.113.99"  # routed via the same gateway by the admin
DEAD_GW = "192.0.2.254"
JAIL_LOCAL = "[portsentry]\njournalmatch = _UID=2147483000\nbantime = 1h\n"


def _record(when: float, address: str, port: int, proto: str) -> str:
    """A line exactly as PortSentry's WriteBlocked() writes it."""
    stamp = time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(when))
    return f"{int(when)} - {stamp} Host: {address}/{address} Port: {port} {proto} Blocked\n"


def legacy_root(base: Path) -> Path:
    """/etc/portsentry (how-to setup), /etc/hosts.deny and /var/lib/portsentry."""
    root = base / "root"
    shutil.copytree(REPO_ROOT / "tests/roots/howto-block/etc", root / "etc")
    conf = root / "etc/portsentry/portsentry.conf"  # the admin once switched to a dead gateway
    conf.write_text(conf.read_text().replace('KILL_ROUTE="/sbin/route add -host $TARGET$ reject"',
                                             f'KILL_ROUTE="/sbin/route add -host $TARGET$ gw {DEAD_GW}"'))
    state = root / "var/lib/portsentry"
    state.mkdir(parents=True)
    for name in ("portsentry.history", "portsentry.blocked.atcp", "portsentry.blocked.audp"):
        (state / name).unlink(missing_ok=True)
    now = time.time()
    tcp = [_record(now - 30 * 86400 * 12, OLD, 80, "TCP"), _record(now - 3600, RECENT, 111, "TCP"),
           _record(now - 1800, IGNORED, 23, "TCP")]
    udp = [_record(now - 600, RECENT_UDP, 161, "UDP"), _record(now - 500, RECENT6, 161, "UDP")]
    (state / "portsentry.blocked.atcp").write_text("".join(tcp))
    (state / "portsentry.blocked.audp").write_text("".join(udp))
    (state / "portsentry.history").write_text("".join(tcp + udp))
    (root / "etc/hosts.deny").write_text(
        "# admin's own\nsshd: 192.0.2.200\n"
        + "".join(f"ALL: {a} : DENY\n" for a in (OLD, RECENT, FOREIGN, IGNORED, RECENT_UDP)))
    return root


def block_like_portsentry(lab: Lab) -> None:
    """What KILL_ROUTE / KILL_RUN_CMD did for each recorded address, plus the admin's own rules."""
    commands = [
        ["route", "add", "-host", RECENT, "reject"],
        ["route", "add", "-host", OLD, "gw", DEAD_GW],
        ["ip", "route", "add", FOREIGN_ROUTED, "via", DEAD_GW],
        ["route", "add", "-host", IGNORED, "reject"],
        ["ip", "route", "add", "blackhole", FOREIGN],
        ["ip", "-6", "route", "add", "unreachable", RECENT6],
        ["ip6tables", "-I", "INPUT", "-s", RECENT6, "-j", "DROP"],
        ["iptables", "-I", "INPUT", "-s", RECENT, "-j", "DROP"],
        ["iptables", "-I", "INPUT", "-s", RECENT, "-m", "limit", "--limit", "3/minute", "--limit-burst",
         "5", "-j", "LOG", "--log-level", "debug", "--log-prefix", "Portsentry: dropping: "],
        ["iptables", "-I", "INPUT", "-s", OLD, "-j", "DROP"],
        ["iptables", "-A", "INPUT", "-s", RECENT, "-p", "tcp", "--dport", "22", "-j", "DROP"],
        ["iptables", "-A", "INPUT", "-s", FOREIGN, "-j", "DROP"],
        # not PortSentry's (issue 12 item 1): Debian's sshd jail, other chains, an annotated rule
        ["iptables", "-N", "f2b-sshd"],
        ["iptables", "-A", "f2b-sshd", "-s", RECENT, "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
        ["iptables", "-A", "OUTPUT", "-s", RECENT, "-j", "DROP"],
        ["iptables", "-N", "DOCKER-USER"],
        ["iptables", "-A", "DOCKER-USER", "-s", RECENT_UDP, "-j", "DROP"],
        ["iptables", "-A", "INPUT", "-s", OLD, "-m", "comment", "--comment", "keep blocked", "-j", "DROP"],
        ["nft", "add", "table", "inet", "legacy"],
        ["nft", "add", "chain", "inet", "legacy", "input", "{ type filter hook input priority 0; }"],
        ["nft", "add", "rule", "inet", "legacy", "input", "ip", "saddr", RECENT_UDP, "drop"],
        ["nft", "add", "rule", "inet", "legacy", "input", "ip", "saddr", FOREIGN, "counter", "drop"],
    ]
    for command in commands:
        done = lab.run_victim(command)
        assert done.returncode == 0, f"{command}: {done.stderr}"


def snapshot(lab: Lab, root: Path) -> dict[str, str]:
    """Routes, firewall and files, without counters and timestamps."""
    def clean(text: str) -> str:
        text = re.sub(r"(?m)^#.*$", "", text)
        return re.sub(r"\[\d+:\d+\]|packets \d+ bytes \d+", "", text)
    def routes(family: str) -> str:  # without the kernel's own (IPv6 link-local ones come late)
        out = lab.run_victim(["ip", family, "route", "show", "table", "all"]).stdout
        return "".join(line for line in out.splitlines(keepends=True) if "proto kernel" not in line)
    state = {
        "routes4": routes("-4"),
        "routes6": routes("-6"),
        "iptables": clean(lab.run_victim(["iptables-save"]).stdout),
        "ip6tables": clean(lab.run_victim(["ip6tables-save"]).stdout),
        "nft": clean(lab.run_victim(["nft", "list", "ruleset"]).stdout),
    }
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        state[str(path.relative_to(root))] = path.read_text()
    return state


def migrate_bans(lab: Lab, root: Path, f2b: Fail2Ban, *extra: str) -> tuple[int, str]:
    """``portsentry-sensor migrate-bans`` run inside the victim namespace."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = lab.run_victim([SYSTEM_PYTHON, "-m", "sensor", "migrate-bans", "--root", str(root),
                           "--fail2ban-socket", str(f2b.socket), *extra], env=env, cwd=str(REPO_ROOT),
                          timeout=120)
    return done.returncode, done.stdout + done.stderr


def ban_expiries(f2b: Fail2Ban) -> dict[str, str]:
    """Address -> the expiry fail2ban reports (``get portsentry banip --with-time``)."""
    return banned_with_time(f2b.client("get", "portsentry", "banip", "--with-time").stdout)


def test_portsentry_blocks_become_expiring_fail2ban_bans(tmp_path: Path, journald: Journal) -> None:
    with Lab("psmig") as lab:
        f2b = Fail2Ban(lab, tmp_path / "f2b", JAIL_LOCAL)
        f2b.start()
        try:
            root = legacy_root(tmp_path)
            block_like_portsentry(lab)
            before = snapshot(lab, root)

            code, out = migrate_bans(lab, root, f2b)
            assert code == 0, out
            assert f"plan: ban in fail2ban jail 'portsentry' (expires): {RECENT} {RECENT_UDP} {RECENT6}" in out
            assert snapshot(lab, root) == before, "the plan alone must change nothing"
            assert f2b.banned() == []

            code, out = migrate_bans(lab, root, f2b, "--apply")
            assert code == 0, out
            after = snapshot(lab, root)

            # recent addresses: banned by the running jail, with an expiry
            assert sorted(f2b.banned()) == sorted([RECENT, RECENT_UDP, RECENT6])
            expiries = ban_expiries(f2b)
            assert set(expiries) == {RECENT, RECENT_UDP, RECENT6}
            assert all("+ 3600 =" in e for e in expiries.values()), expiries
            f2b.wait_in_set(RECENT)
            f2b.wait_in_set(RECENT6)
            # PortSentry's blocks are gone
            for address in (RECENT, OLD, IGNORED):
                assert address not in after["routes4"]
            assert f"-A INPUT -s {RECENT}/32 -j DROP" not in after["iptables"]
            assert "Portsentry: dropping" not in after["iptables"]
            assert f"-A INPUT -s {OLD}/32 -j DROP" not in after["iptables"]
            assert f"ip saddr {RECENT_UDP} drop" not in after["nft"]
            assert RECENT6 not in after["routes6"] and RECENT6 not in after["ip6tables"]
            deny = after["etc/hosts.deny"]
            assert all(f"ALL: {a} : DENY" not in deny for a in (OLD, RECENT, IGNORED, RECENT_UDP))
            # ... and the admin's own blocks are untouched
            assert f"blackhole {FOREIGN}" in after["routes4"]
            assert f"{FOREIGN_ROUTED} via {DEAD_GW}" in after["routes4"]
            assert f"-A INPUT -s {RECENT}/32 -p tcp -m tcp --dport 22 -j DROP" in after["iptables"]
            assert f"-A INPUT -s {FOREIGN}/32 -j DROP" in after["iptables"]
            for kept in (f"-A f2b-sshd -s {RECENT}/32 -j REJECT --reject-with icmp-port-unreachable",
                         f"-A OUTPUT -s {RECENT}/32 -j DROP", f"-A DOCKER-USER -s {RECENT_UDP}/32 -j DROP",
                         f'-A INPUT -s {OLD}/32 -m comment --comment "keep blocked" -j DROP'):
                assert kept in after["iptables"], kept
            assert f"ip saddr {FOREIGN} counter" in after["nft"]
            assert f"ALL: {FOREIGN} : DENY" in deny and "sshd: 192.0.2.200" in deny
            # old and ignored addresses are unblocked, not re-banned
            assert OLD not in f2b.banned() and IGNORED not in f2b.banned()
            assert any(name.startswith("etc/hosts.deny.bak-") for name in after)
            assert not (root / "var/lib/portsentry/portsentry.blocked.atcp").exists()

            # a second run finds nothing to do and changes nothing
            code, out = migrate_bans(lab, root, f2b, "--apply")
            assert code == 0, out
            assert "nothing to do" in out
            again = snapshot(lab, root)
            for key in ("routes4", "routes6", "iptables", "ip6tables", "etc/hosts.deny"):
                assert again[key] == after[key]
        finally:
            f2b.stop()
