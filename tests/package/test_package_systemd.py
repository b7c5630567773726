"""The installed package under a real systemd: the unit, the jail, a scan, a ban.

Issue 5, done-when 5, with the paths the package installs, on both Debian
stables (issue 10: bookworm with systemd 252 and fail2ban 1.0.2, trixie with
systemd 257 and fail2ban 1.1.0): a fresh root (debootstrap) gets systemd and
the source tree, and boots with systemd-nspawn inside a network namespace
this test makes (psK-v), joined by
a veth pair to an attacker namespace (psK-a).  In it, the README's Quick start
runs as a user would run it (tools/install: build, apt-get install, fail2ban
up); systemd starts portsentry-sensor.service (the shipped hardened unit) and
fail2ban (with our installed jail pack); nmap in psK-a scans; the ban lands in
the container's own nftables (psK-v), never the host's.  Last, an admin's
jail.d/portsentry.local shortens the ladder: repeated scans end in a permanent
ban that a `systemctl restart fail2ban` restores from the database and that
`fail2ban-client set portsentry unbanip` lifts for good.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debroot import BUILD_DEPENDS, DebianRoot, copy_source_tree, require, run
from f2bclient import ban_times as parse_ban_times

pytestmark = pytest.mark.package

VICTIM, ATTACKER = "psK-v", "psK-a"
VICTIM_IP, ATTACKER_IP = "192.0.2.1", "192.0.2.2"
CONTROL_IP = "192.0.2.3"   # a second address of the attacker: the positive controls' source
FORGED_IP = "198.51.100.9"
MACHINE = "pskg-sensor"
# What each suite must run this story with (major systemd, fail2ban version prefix).
VERSIONS = {"bookworm": ("252", "1.0.2"), "trixie": ("257", "1.1.0")}


@dataclass
class Booted:
    """A booted container: its init's host pid, and commands inside it."""

    root: DebianRoot
    leader: int
    attacker: int
    quick_start: subprocess.CompletedProcess[str] | None = None

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the container (all its namespaces), as root."""
        return run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p",
                    "/bin/sh", "-c", script], check=check, timeout=timeout)

    def attack(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the attacker namespace (held open by a process of ours)."""
        return run(["nsenter", "-t", str(self.attacker), "-n", *args], timeout=60)

    def show(self, *props: str) -> dict[str, str]:
        """systemctl show of our unit."""
        out = self.sh("systemctl show portsentry-sensor " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def make_namespaces() -> None:
    for ns in (VICTIM, ATTACKER):
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
    run(["ip", "link", "add", "psK-vv", "netns", VICTIM, "type", "veth", "peer", "name", "psK-av",
         "netns", ATTACKER])
    for ns, dev, v4, v6 in ((VICTIM, "psK-vv", VICTIM_IP, "2001:db8::1"),
                            (ATTACKER, "psK-av", ATTACKER_IP, "2001:db8::2")):
        run(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev])
        run(["ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad"])
        run(["ip", "-n", ns, "link", "set", dev, "up"])
    run(["ip", "-n", ATTACKER, "addr", "add", f"{CONTROL_IP}/24", "dev", "psK-av"])


def delete_namespaces() -> None:
    for ns in (VICTIM, ATTACKER):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def leader_of(nspawn: subprocess.Popen[str]) -> int | None:
    """The container's init: the child of systemd-nspawn."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == nspawn.pid:
                return int(entry.name)
    return None


def prepare(root: DebianRoot) -> None:
    """systemd as init, tools/install's build dependencies, the source tree in /src."""
    root.sh("apt-get install -y -qq --no-install-recommends systemd systemd-sysv " + " ".join(BUILD_DEPENDS),
            timeout=600)
    copy_source_tree(root.file("/src"))
    root.file("/usr/sbin/policy-rc.d").unlink()
    root.umount()


@pytest.fixture(scope="module")
def booted(debian_root: DebianRoot) -> Iterator[Booted]:
    """The root booted under systemd, after the README's Quick start (tools/install) ran in it."""
    require(["systemd-nspawn", "nsenter", "ip", "nmap"])
    root = debian_root
    prepare(root)
    delete_namespaces()
    make_namespaces()
    # Holds the attacker namespace open by process, whatever happens to its name.
    holder = subprocess.Popen(["ip", "netns", "exec", ATTACKER, "sleep", "3600"], stdin=subprocess.DEVNULL)
    nspawn = subprocess.Popen(
        ["systemd-nspawn", "-q", "-D", str(root.path), "-b", "-M", MACHINE, "--register=no", "--keep-unit",
         "--console=passive", f"--network-namespace-path=/run/netns/{VICTIM}",
         # fail2ban's nftables actions; the netns is ours, never the host's.
         "--capability=CAP_NET_ADMIN"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: leader_of(nspawn) is not None or nspawn.poll() is not None, 30)
        leader = leader_of(nspawn)
        assert leader, f"systemd-nspawn exited {nspawn.poll()}"
        box = Booted(root, leader, holder.pid)
        assert wait_for(lambda: box.sh("systemctl is-system-running", check=False).stdout.strip()
                        in ("running", "degraded"), 90), box.sh("systemctl --failed", check=False).stdout
        # The Quick start, offline: apt finds our Depends among the root's cached .debs.
        box.quick_start = box.sh("cd /src && tools/install 2>&1", check=False, timeout=900)
        yield box
    finally:
        if nspawn.poll() is None:
            nspawn.send_signal(signal.SIGTERM)  # nspawn shuts the container down cleanly
            try:
                nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(nspawn.pid, signal.SIGKILL)
                nspawn.wait(timeout=10)
        holder.kill()
        holder.wait(timeout=10)
        delete_namespaces()


def test_quick_start_under_systemd_ends_with_the_jail_answering(booted: Booted) -> None:
    """README Quick start on a fresh Debian 12 or 13 with systemd: tools/install, then the jail answers."""
    assert booted.quick_start is not None
    out = booted.quick_start.stdout
    assert booted.quick_start.returncode == 0, out[-4000:]
    assert "Status for the jail: portsentry" in out and "systemd is not PID 1" not in out, out[-4000:]


def test_unit_is_running_and_reported_ready(booted: Booted) -> None:
    state = booted.show("ActiveState", "SubState", "StatusText", "NRestarts", "Type")
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["Type"] == "notify" and "watching" in state["StatusText"], state
    assert booted.sh("systemctl is-active fail2ban", check=False).stdout.strip() == "active"


def test_runs_as_the_sensor_user_with_only_two_capabilities(booted: Booted) -> None:
    pid = booted.show("MainPID")["MainPID"]
    status = booted.sh(f"cat /proc/{pid}/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == booted.sh("id -u portsentry-sensor").stdout.strip()
    net_caps = (1 << 10) | (1 << 13)  # CAP_NET_BIND_SERVICE, CAP_NET_RAW
    assert int(fields["CapEff"], 16) == net_caps and int(fields["CapBnd"], 16) == net_caps
    assert fields["NoNewPrivs"].strip() == "1" and fields["Seccomp"].strip() == "2"
    limits = booted.sh(f"cat /proc/{pid}/limits").stdout
    assert re.search(r"^Max open files\s+16384\s+16384", limits, re.M), limits


def test_the_story_runs_with_the_suites_systemd_and_fail2ban(booted: Booted) -> None:
    systemd, fail2ban = VERSIONS[booted.root.suite]
    assert booted.sh("systemctl --version").stdout.split()[1] == systemd
    assert booted.sh("dpkg-query -W -f='${Version}' fail2ban").stdout.startswith(fail2ban + "-")


def test_unit_security_exposure_is_at_most_2_under_the_suites_systemd(booted: Booted) -> None:
    """`systemd-analyze security` of the running unit by the suite's systemd (252 on 12, 257 on 13)."""
    version = booted.sh("systemctl --version").stdout.split()[1]
    result = booted.sh("systemd-analyze security --no-pager portsentry-sensor.service", check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, f"no score from systemd {version}:\n{result.stdout}\n{result.stderr}"
    assert float(match.group(1)) <= 2.0, f"systemd {version}: exposure {match.group(1)} > 2.0"


def banned(booted: Booted) -> str:
    return booted.sh("fail2ban-client status portsentry", check=False).stdout


def nft_set(booted: Booted, name: str) -> str:
    return booted.sh(f"nft list set inet f2b-table {name}", check=False).stdout


def fail2ban_log(booted: Booted) -> str:
    return booted.sh("cat /var/log/fail2ban.log", check=False).stdout


def control_scan(booted: Booted, mark: int) -> None:
    """Positive control: a real SYN scan from CONTROL_IP; wait until fail2ban found it (after ``mark``
    in its log), so it has read every journal entry before it; then lift the ban again."""
    booted.sh(f"fail2ban-client set portsentry unbanip {CONTROL_IP}", check=False)
    booted.attack("nmap", "-n", "-Pn", "-sS", "-S", CONTROL_IP, "-e", "psK-av", "-p", "60-70",
                  "--max-retries", "0", VICTIM_IP)
    assert wait_for(lambda: f"[portsentry] Found {CONTROL_IP}" in fail2ban_log(booted)[mark:], 15), \
        fail2ban_log(booted)[-3000:]
    booted.sh(f"fail2ban-client set portsentry unbanip {CONTROL_IP}", check=False)


def test_forged_alert_from_another_local_user_bans_nobody(booted: Booted) -> None:
    """Issue 4's unforgeable match, with the installed jail: `logger` as nobody names a third address.

    The forged line is in the journal with nobody's _UID (journald's, not the client's); the
    installed jail's journalmatch selects the sensor's real alerts and not it; and fail2ban found
    a real scan logged after it (so it has read past the forgery) but never the forged address.
    """
    nobody = booted.sh("id -u nobody").stdout.strip()
    line = (f"attackalert: src={FORGED_IP} dst={VICTIM_IP} proto=tcp dport=23 scan=syn mode=atcp "
            f"verified=no count=1 TCP SYN scan from host {FORGED_IP} to TCP port 23")
    mark = len(fail2ban_log(booted))
    booted.sh(f"setpriv --reuid=nobody --regid=nogroup --clear-groups logger -t portsentry-sensor '{line}'")
    assert wait_for(lambda: f"src={FORGED_IP}" in booted.sh(
        f"journalctl -o cat --no-pager _UID={nobody} SYSLOG_IDENTIFIER=portsentry-sensor", check=False).stdout,
        10), "the forged line never reached the journal (with nobody's _UID)"
    control_scan(booted, mark)
    assert f"Found {FORGED_IP}" not in fail2ban_log(booted)[mark:]
    assert FORGED_IP not in banned(booted) and FORGED_IP not in nft_set(booted, "addr-set-portsentry")
    match = booted.sh("fail2ban-client get portsentry journalmatch").stdout
    assert "_SYSTEMD_UNIT=portsentry-sensor.service" in match, match
    selected = booted.sh("fail2ban-regex -o '<ip>' -m _SYSTEMD_UNIT=portsentry-sensor.service "
                         "systemd-journal portsentry-sensor", timeout=120).stdout.split()
    assert CONTROL_IP in selected and FORGED_IP not in selected, selected


def test_a_scan_is_banned_and_unbanip_lets_the_address_back(booted: Booted) -> None:
    booted.attack("nmap", "-n", "-Pn", "-sS", "-p", "20-30", "--max-retries", "0", VICTIM_IP)
    assert wait_for(lambda: ATTACKER_IP in banned(booted), 15), banned(booted)
    # The jail lists the address as soon as it decides; the ban action (portsentry-nft.py, which
    # made the table at fail2ban's start) adds it to the set right after.
    assert wait_for(lambda: ATTACKER_IP in nft_set(booted, "addr-set-portsentry"), 10), \
        booted.sh("tail -n 20 /var/log/fail2ban.log", check=False).stdout
    journal = booted.sh("journalctl -o verbose _SYSTEMD_UNIT=portsentry-sensor.service "
                        f"PORTSENTRY_SRC={ATTACKER_IP} --no-pager").stdout
    assert "attackalert: src=192.0.2.2" in journal and "PORTSENTRY_SCAN=syn" in journal
    booted.sh(f"fail2ban-client set portsentry unbanip {ATTACKER_IP}")
    assert ATTACKER_IP not in banned(booted)
    assert ATTACKER_IP not in nft_set(booted, "addr-set-portsentry")


def test_an_ipv6_scan_is_banned_too(booted: Booted) -> None:
    attacker6 = "2001:db8::2"
    booted.attack("nmap", "-6", "-n", "-Pn", "-sS", "-p", "40-50", "--max-retries", "0", "2001:db8::1")
    assert wait_for(lambda: attacker6 in banned(booted), 15), banned(booted) + booted.sh(
        "journalctl -u portsentry-sensor -n 20 --no-pager; tail -n 20 /var/log/fail2ban.log", check=False).stdout
    assert wait_for(lambda: attacker6 in nft_set(booted, "addr6-set-portsentry"), 10)
    booted.sh(f"fail2ban-client set portsentry unbanip {attacker6}")
    assert attacker6 not in nft_set(booted, "addr6-set-portsentry")


def test_watchdog_is_fed(booted: Booted) -> None:
    assert booted.show("WatchdogUSec")["WatchdogUSec"] == "30s"
    assert wait_for(lambda: booted.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"] != "0",
                    20, step=1)


def test_reload_applies_and_a_config_error_does_not_loop(booted: Booted) -> None:
    booted.sh("systemctl reload portsentry-sensor")
    assert wait_for(lambda: "configuration reloaded" in booted.sh("journalctl -u portsentry-sensor -n 5 "
                                                                  "--no-pager").stdout, 10)
    conf = booted.root.file("/etc/portsentry-sensor/portsentry.conf")
    good = conf.read_text()
    try:
        # At the top: the first occurrence of a key is the one that counts (PortSentry's rule).
        conf.write_text('ADVANCED_PORTS_TCP="70000"\n' + good)
        assert booted.sh("systemctl reload portsentry-sensor", check=False).returncode != 0
        assert booted.show("ActiveState")["ActiveState"] == "active"
        booted.sh("systemctl restart portsentry-sensor", check=False)
        time.sleep(7)  # longer than RestartSec=5s
        state = booted.show("ActiveState", "NRestarts", "ExecMainStatus")
        assert state == {"ActiveState": "failed", "NRestarts": "0", "ExecMainStatus": "2"}, state
    finally:
        conf.write_text(good)
        booted.sh("systemctl reset-failed portsentry-sensor; systemctl start portsentry-sensor", check=False)
    assert booted.show("ActiveState")["ActiveState"] == "active"


# -- the escalation ladder with the installed jail pack --------------------

SERVICE_PORT = 8080  # a real service in the container: what a banned attacker loses
# What an admin writes to shorten the ladder (the knobs of the shipped jail.d/portsentry.conf).
JAIL_LOCAL = """\
# Short times for the package test: 2 s, then 6 s, the 3rd ban within 1 h is permanent.
[portsentry]
bantime = 2
bantime.multipliers = 1 3
escalate_after = 3
escalate_window = 1h
"""
TCP_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
except OSError as exc:
    print(exc); sys.exit(1)
"""


def connects(booted: Booted) -> bool:
    """The attacker opens a TCP connection to the container's service."""
    return run(["nsenter", "-t", str(booted.attacker), "-n", "/usr/bin/python3", "-c", TCP_PROBE,
                VICTIM_IP, str(SERVICE_PORT)], check=False, timeout=30).returncode == 0


def ban_times(booted: Booted) -> dict[str, int]:
    """`fail2ban-client get portsentry banip --with-time`: address -> bantime in s (-1: permanent)."""
    return parse_ban_times(booted.sh("fail2ban-client get portsentry banip --with-time", check=False).stdout)


def in_set(booted: Booted) -> bool:
    return ATTACKER_IP in nft_set(booted, "addr-set-portsentry")


BANS_QUERY = """
import sqlite3, sys
db = sqlite3.connect("file:/var/lib/fail2ban/fail2ban.sqlite3?mode=ro", uri=True, timeout=10)
rows = db.execute("SELECT bantime FROM bans WHERE jail = 'portsentry' AND ip = ? ORDER BY timeofban, rowid",
                  (sys.argv[1],))
print(" ".join(str(row[0]) for row in rows))
"""


def recorded_bans(booted: Booted, address: str = ATTACKER_IP) -> list[int]:
    """The bantime fail2ban's database recorded for each ban of the address (oldest first; -1:
    permanent).  The observer writes it once it has decided the (increased) time: no sleep needed."""
    script = booted.root.file("/var/tmp/pskg-bans.py")
    if not script.exists():
        script.write_text(BANS_QUERY)
    return [int(t) for t in booted.sh(f"python3 /var/tmp/pskg-bans.py {address}").stdout.split()]


def restart_fail2ban(booted: Booted) -> None:
    """systemctl restart fail2ban, then wait until the jail answers again."""
    booted.sh("systemctl restart fail2ban")
    assert wait_for(lambda: booted.sh("fail2ban-client status portsentry", check=False).returncode == 0, 30), \
        booted.sh("tail -n 30 /var/log/fail2ban.log", check=False).stdout


def syn_probe(booted: Booted) -> None:
    """One SYN to one unused port below 1024: one alert, no summary to prolong the ban."""
    booted.attack("nmap", "-n", "-Pn", "-sS", "-p", "23", "--max-retries", "0", VICTIM_IP)


@pytest.fixture
def tuned(booted: Booted) -> Iterator[Booted]:
    """The admin's .local with short times, the sensor's scan window shortened, a web service up."""
    local = booted.root.file("/etc/fail2ban/jail.d/portsentry.local")
    conf = booted.root.file("/etc/portsentry-sensor/portsentry.conf")
    good = conf.read_text()
    try:
        local.write_text(JAIL_LOCAL)
        # A new alert per scan needs a scan window shorter than the test's bans (shipped: 300 s).
        conf.write_text(re.sub(r"^SCAN_WINDOW=.*$", 'SCAN_WINDOW="1"', good, flags=re.M))
        # A restart (not a reload) drops the sensor's open windows: their closing summaries
        # (earlier tests' scans) are written now, not in the middle of the ladder.
        booted.sh("systemctl restart portsentry-sensor && fail2ban-client reload")
        time.sleep(2)  # fail2ban reads those lines within a second
        # Earlier tests' bans and their history (unbanip also forgets it): the ladder starts at 1.
        booted.sh(f"fail2ban-client set portsentry unbanip {ATTACKER_IP}", check=False)
        booted.sh(f"systemd-run --unit=pskg-web --collect python3 -m http.server {SERVICE_PORT} "
                  f"--bind {VICTIM_IP}")
        yield booted
    finally:
        booted.sh("systemctl stop pskg-web", check=False)
        local.unlink(missing_ok=True)
        conf.write_text(good)
        booted.sh(f"fail2ban-client set portsentry unbanip {ATTACKER_IP}; fail2ban-client reload; "
                  "systemctl reload portsentry-sensor", check=False)


def test_repeat_offender_is_banned_for_good_across_restarts_and_unbanip_lifts_it(tuned: Booted) -> None:
    """The installed ladder: 2 s, 6 s, permanent; restored after a restart; unbanip lifts it for good."""
    booted = tuned
    assert booted.sh("fail2ban-client get portsentry bantime").stdout.strip() == "2"
    # The Python action keeps its place (and takes the new count) across `fail2ban-client reload`.
    assert "portsentry-escalate" in booted.sh("fail2ban-client get portsentry actions").stdout
    assert booted.sh("fail2ban-client get portsentry action portsentry-escalate after").stdout.strip() == "3"
    assert wait_for(lambda: connects(booted), 10), "the service is unreachable before any scan:\n" + \
        booted.sh("journalctl -u pskg-web --no-pager -n 20; cat /proc/net/tcp; nft list ruleset",
                  check=False).stdout
    for rung, ladder in ((1, [2]), (2, [2, 6])):
        syn_probe(booted)
        assert wait_for(lambda: in_set(booted), 15), ban_times(booted)
        assert wait_for(lambda n=rung: len(recorded_bans(booted)) >= n, 15), recorded_bans(booted)
        assert recorded_bans(booted) == ladder, fail2ban_log(booted)[-3000:]
        assert wait_for(lambda: not in_set(booted), 15), "a time-limited ban did not expire"
    syn_probe(booted)
    assert wait_for(lambda: ban_times(booted).get(ATTACKER_IP) == -1, 15), ban_times(booted)
    assert f"Permanent ban {ATTACKER_IP}" in booted.sh("cat /var/log/fail2ban.log").stdout
    time.sleep(7)  # longer than any time-limited rung
    assert in_set(booted) and not connects(booted)

    restart_fail2ban(booted)
    assert wait_for(lambda: in_set(booted), 15), "the permanent ban was not restored after a restart"
    assert ban_times(booted).get(ATTACKER_IP) == -1, ban_times(booted)
    assert f"Restore Ban {ATTACKER_IP}" in booted.sh("cat /var/log/fail2ban.log").stdout
    assert not connects(booted)

    booted.sh(f"fail2ban-client set portsentry unbanip {ATTACKER_IP}")
    assert wait_for(lambda: not in_set(booted), 5) and wait_for(lambda: connects(booted), 5)
    mark = len(fail2ban_log(booted))
    restart_fail2ban(booted)
    control_scan(booted, mark)  # restored bans are queued before any new one: they are in by now
    assert f"Ban {ATTACKER_IP}" not in fail2ban_log(booted)[mark:], "unbanip did not stick"
    assert not in_set(booted) and ATTACKER_IP not in ban_times(booted), "unbanip did not stick"
    assert connects(booted)


FLOOD_SOURCES = 25_000     # more than the unit's LogRateLimitBurst (20,000 per 30 s) if each alerted
FLOOD_RATE = 2_500         # packets/s: 10 s, bounded in count (and time: spoof.py --max-seconds)
FLOOD_NET = "198.18.0.0/15"
FLOOD_CONTROL_INDEX = 100_000   # the readiness probe's source: 198.19.134.161, outside the flood's
REPO = Path(__file__).resolve().parents[2]


def journal_cursor(booted: Booted) -> str:
    """The container journal's current end."""
    out = booted.sh("journalctl -q -n 1 --show-cursor --no-pager").stdout
    return out.rsplit("-- cursor: ", 1)[1].strip()


def test_a_decoy_flood_costs_no_journal_line_and_every_source_is_counted(booted: Booted) -> None:
    """Issue 11, item 4, under the packaged unit: 25,000 forged one-SYN sources (198.18.0.0/15)
    at 2,500/s from the attacker namespace to the booted container's address.

    Without the flood guard that would be 25,000 alert lines, over the unit's LogRateLimitBurst
    (20,000 per 30 s), and journald would drop some with only its own "Suppressed N messages"
    line.  With it: journald suppressed nothing from the sensor, the sensor said it was a flood,
    and its journal lines match its own counters: every forged source we sent is either an alert
    line in the journal or counted as suppressed in its "flood ended" line (alerts + suppressed
    == sent), in a bounded number of lines.
    """
    spoofed = ipaddress.ip_network(FLOOD_NET)
    mac = json.loads(run(["ip", "-j", "-n", VICTIM, "link", "show", "psK-vv"]).stdout)[0]["address"]
    def spoof(count: int, offset: int = 0) -> str:
        """bench/spoof.py in the attacker namespace: ``count`` forged one-SYN sources, paced, bounded."""
        return run(["nsenter", "-t", str(booted.attacker), "-n", "python3", str(REPO / "bench" / "spoof.py"),
                    "--mac", mac, "--ifname", "psK-av", "--dst4", VICTIM_IP, "--dst6", "2001:db8::1",
                    "--count4", str(count), "--count6", "0", "--offset", str(offset),
                    "--tcp-ports", "40,41,42,43,44,45", "--rate", str(FLOOD_RATE),
                    "--max-seconds", str(2 * count / FLOOD_RATE + 10)], timeout=120).stdout

    # The sensor captures now: not in a reload (the previous test's teardown reloads it, and a
    # reload reopens the capture sockets: a packet in between is not seen), and a probe after
    # that is alerted: one forged SYN from a source outside the flood's range (raw frames to the
    # container's MAC, as the flood: nmap -S from an off-link address would be stuck at ARP).
    assert wait_for(lambda: booted.show("ActiveState", "SubState") == {"ActiveState": "active",
                                                                       "SubState": "running"}, 30)
    # Seen on bookworm (3 runs of 3, not on trixie): the first forged SYN after the previous
    # test's `systemctl reload portsentry-sensor` is not alerted (the flood's first source then,
    # the first readiness probe now); the next ones are.  Not a journald drop (the line is never
    # written); not investigated yet.  The probes make the flood's count exact regardless.
    unseen = []
    for k in range(5):   # bounded: a lost probe is recorded and retried from a new source
        before = journal_cursor(booted)
        spoof(1, offset=FLOOD_CONTROL_INDEX + k)
        control = str(spoofed.network_address + 1 + FLOOD_CONTROL_INDEX + k)
        if wait_for(lambda c=control, b=before: f"PORTSENTRY_SRC={c}" in booted.sh(
                f"journalctl -o export --no-pager --after-cursor='{b}' _SYSTEMD_UNIT=portsentry-sensor.service",
                check=False).stdout, 10):
            break
        unseen.append(control)
    else:
        raise AssertionError(f"the sensor alerted none of 5 probes before the flood: {unseen}")
    print(f"readiness probes not alerted: {unseen}")
    booted.sh(f"fail2ban-client set portsentry unbanip {control}", check=False)
    cursor = journal_cursor(booted)
    out = spoof(FLOOD_SOURCES)
    sent = json.loads(out.strip().splitlines()[-1])["sent"]
    assert sent == FLOOD_SOURCES, out

    def unit_lines() -> list[dict[str, str]]:
        text = booted.sh(f"journalctl -o json --no-pager --after-cursor='{cursor}' "
                         "_SYSTEMD_UNIT=portsentry-sensor.service", timeout=120).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def ended() -> list[str]:
        return [e["MESSAGE"] for e in unit_lines() if "adminalert: flood ended" in str(e.get("MESSAGE", ""))]
    assert wait_for(lambda: bool(ended()), 90, step=2), [e.get("MESSAGE") for e in unit_lines()][-20:]

    lines = unit_lines()
    messages = [str(e.get("MESSAGE", "")) for e in lines]
    alerts = [e for e in lines if str(e.get("MESSAGE", "")).startswith("attackalert:")
              and ipaddress.ip_address(e.get("PORTSENTRY_SRC", "0.0.0.0")) in spoofed]
    assert any(m.startswith("adminalert: flood: more than 20 new unverified sources") for m in messages), messages
    summary = re.search(r"flood ended after \d+ s: (\d+) new unverified sources, (\d+) suppressed, "
                        r"(\d+) alerted for scan behaviour", ended()[0])
    assert summary, ended()
    seen, suppressed, scan_alerts = map(int, summary.groups())
    assert scan_alerts == 0, ended()   # one SYN per source: none looks like a scanner
    assert len(alerts) + suppressed == sent, (len(alerts), summary.group(0), sent)
    assert len(lines) <= 100, f"{len(lines)} lines for one flood"
    # journald's own word: "Suppressed N messages from portsentry-sensor.service" (any systemd).
    everything = booted.sh(f"journalctl -o cat --no-pager --after-cursor='{cursor}'", timeout=120).stdout
    dropped = [line for line in everything.splitlines() if "Suppressed" in line and "portsentry" in line]
    assert not dropped, dropped
    print(f"flood: sent {sent}, {len(alerts)} alert lines, {suppressed} suppressed, {seen} seen "
          f"during the flood, {len(lines)} unit lines")
