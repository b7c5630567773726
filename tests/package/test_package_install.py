"""The user's story on a fresh Debian 12 or 13: apt installs the .deb, it works, purge leaves nothing.

Issue 5, done-when 3 and 4, in a minbase root made by debootstrap (never the
dev machine's own root), once on bookworm and once on trixie (issue 10): the
same ``_all.deb``, built on this host, on both.  A fail2ban-server runs inside the root
in a network namespace of its own (its nftables actions never reach the host),
so the maintainer scripts' "reload fail2ban when it runs" is exercised too.
The tests run in file order on one root: install, inspect, reinstall, remove,
purge.

Done-when 5 (the sensor + fail2ban story with the installed paths) is in
test_package_systemd.py, under a real systemd.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from debroot import ENV, DebianRoot, build_deb

pytestmark = pytest.mark.package

PKG = "portsentry-sensor"
USER = "portsentry-sensor"
CONFFILES = ("/etc/portsentry-sensor/portsentry.conf", "/etc/portsentry-sensor/portsentry.ignore",
             "/etc/fail2ban/filter.d/portsentry-sensor.conf", "/etc/fail2ban/jail.d/portsentry.conf",
             "/etc/fail2ban/action.d/portsentry-escalate.py")
# As the unit runs it: the sensor user, only these two capabilities.
AS_SENSOR = ("setpriv --reuid=portsentry-sensor --regid=portsentry-sensor --init-groups "
             "--inh-caps=-all,+net_bind_service,+net_raw --ambient-caps=-all,+net_bind_service,+net_raw "
             "--bounding-set=-all,+net_bind_service,+net_raw --no-new-privs")


@dataclass
class Installed:
    """The root with our package installed, and what it looked like just before."""

    root: DebianRoot
    before: dict[str, str]
    output: str


def depends(deb: Path) -> list[str]:
    """Package names from the .deb's Depends and Recommends (apt installs both; versions and :any stripped)."""
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends", "Recommends"], capture_output=True,
                            text=True, check=True).stdout
    field = ",".join(re.split(r"^(?:Depends|Recommends):", fields, flags=re.M)).replace("\n", " ")
    names = [part.split("(")[0].split(":")[0].strip() for part in field.split(",")]
    return sorted({name for name in names if name})


def start_fail2ban(root: DebianRoot) -> None:
    """fail2ban-server in the root, in a fresh network namespace (nftables stays there)."""
    # Debian 12's stock sshd jail needs a log file to start (no rsyslog here); harmless on 13.
    root.sh("touch /var/log/auth.log && unshare --net fail2ban-client -q start", timeout=60)
    for _ in range(50):
        if root.sh("fail2ban-client ping", check=False, timeout=30).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError("fail2ban-server did not answer in the test root")


def stop_fail2ban(root: DebianRoot) -> None:
    """Stop the root's fail2ban-server; kill it by its pid file if it does not stop."""
    root.sh("fail2ban-client -q stop", check=False, timeout=60)
    pidfile = root.file("/run/fail2ban/fail2ban.pid")
    if pidfile.exists():
        pid = pidfile.read_text().strip()
        if pid.isdigit():
            subprocess.run(["kill", "-9", pid], check=False)


@pytest.fixture(scope="module")
def installed(debian_root: DebianRoot, deb: Path) -> Iterator[Installed]:
    """Our Depends first (from the root's cached .debs), fail2ban running, then the .deb."""
    root = debian_root
    root.sh("apt-get install -y -qq " + " ".join(depends(deb)), timeout=600)
    start_fail2ban(root)
    try:
        # A PortSentry leftover: postinst must point to import-config/migrate-bans.
        root.sh("mkdir -p /etc/portsentry && touch /etc/portsentry/portsentry.conf")
        before = root.snapshot()
        (root.file("/tmp") / deb.name).write_bytes(deb.read_bytes())
        result = root.sh(f"apt-get install -y /tmp/{deb.name}", timeout=600)
        (root.file("/tmp") / deb.name).unlink()
        assert "1 newly installed" in result.stdout, result.stdout
        yield Installed(root, before, result.stdout + result.stderr)
    finally:
        stop_fail2ban(root)


def test_apt_installs_the_package(installed: Installed) -> None:
    status = installed.root.sh(f"dpkg-query -W -f='${{Status}} ${{Version}}' {PKG}").stdout
    assert status.startswith("install ok installed"), status


def test_postinst_points_portsentry_users_to_the_migration_commands(installed: Installed) -> None:
    hint = [line for line in installed.output.splitlines() if "/etc/portsentry" in line]
    assert len(hint) == 1 and "import-config" in hint[0] and "migrate-bans" in hint[0], installed.output


def test_code_is_private_and_byte_compiled(installed: Installed) -> None:
    root = installed.root
    assert root.file("/usr/share/portsentry-sensor/sensor/cli.py").is_file()
    assert list(root.file("/usr/share/portsentry-sensor/sensor/__pycache__").glob("cli.*.pyc"))
    owned = root.sh(f"dpkg -L {PKG}").stdout
    assert "dist-packages" not in owned and "site-packages" not in owned
    assert "/usr/sbin/portsentry-sensor" in owned.splitlines()


def test_conffiles_are_registered(installed: Installed) -> None:
    listed = installed.root.sh(f"dpkg-query -W -f='${{Conffiles}}' {PKG}").stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert set(CONFFILES) <= names, listed


def test_system_user_exists_without_a_login(installed: Installed) -> None:
    entry = installed.root.sh(f"getent passwd {USER}").stdout.strip().split(":")
    assert int(entry[2]) < 1000, entry
    assert entry[5] == "/nonexistent" and entry[6] == "/usr/sbin/nologin", entry


def test_unit_is_installed_and_enabled(installed: Installed) -> None:
    root = installed.root
    assert root.file("/usr/lib/systemd/system/portsentry-sensor.service").is_file()
    assert root.file("/etc/systemd/system/multi-user.target.wants/portsentry-sensor.service").is_symlink()


def test_check_accepts_the_shipped_conffile(installed: Installed) -> None:
    """Done-when 4: `portsentry-sensor check` with the shipped conffile, as root and as the sensor user."""
    result = installed.root.sh("portsentry-sensor check")
    assert "portsentry.conf: OK" in result.stdout, result.stdout + result.stderr
    assert "TCP: mode atcp" in result.stdout and "UDP: mode audp" in result.stdout
    quiet = installed.root.sh(f"{AS_SENSOR} /usr/sbin/portsentry-sensor check --quiet")
    assert quiet.returncode == 0


def test_fail2ban_dry_parse_accepts_the_jail_pack(installed: Installed) -> None:
    """Done-when 4: the suite's fail2ban (1.0.2 on 12, 1.1.0 on 13) parses the installed jail pack."""
    root = installed.root
    test = root.sh("fail2ban-client --test", check=False)
    assert test.returncode == 0, test.stdout + test.stderr
    dump = root.sh("fail2ban-client -d", check=False)
    assert dump.returncode == 0, dump.stdout + dump.stderr
    assert "['add', 'portsentry', 'systemd']" in dump.stdout, dump.stdout[-3000:]


def test_postinst_reloaded_the_running_fail2ban(installed: Installed) -> None:
    status = installed.root.sh("fail2ban-client status portsentry", check=False)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "Currently banned" in status.stdout


def test_sensor_starts_from_installed_paths_as_the_unit_would(installed: Installed) -> None:
    """The installed wrapper starts the daemon as the sensor user with two capabilities: READY=1."""
    root = installed.root
    sock_path = root.file("/run/ps-test-notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock_path.chmod(0o777)
        sock.settimeout(1.0)
        env = dict(ENV, NOTIFY_SOCKET="/run/ps-test-notify.sock")
        proc = subprocess.Popen(["chroot", str(root.path), "unshare", "--net", "--",
                                 *AS_SENSOR.split(), "/usr/sbin/portsentry-sensor", "run"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            messages = wait_ready(sock, proc)
        finally:
            proc.terminate()
            out, err = proc.communicate(timeout=20)
        sock_path.unlink()
    assert any("READY=1" in m for m in messages), f"no READY=1: {messages}\n{err}"
    assert proc.returncode == 0, err


def wait_ready(sock: socket.socket, proc: subprocess.Popen[str], timeout: float = 20) -> list[str]:
    """sd_notify messages until READY=1, the process exits, or the timeout."""
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            messages.append(sock.recv(4096).decode(errors="replace"))
        except TimeoutError:
            continue
        if "READY=1" in messages[-1]:
            break
    return messages


def capabilities(pid: str) -> tuple[int, int, int]:
    """(uid, CapEff, CapBnd) of a process, from /proc/PID/status."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    return int(fields["Uid"].split()[0]), int(fields["CapEff"], 16), int(fields["CapBnd"], 16)


def test_init_script_runs_the_sensor_where_systemd_is_not_init(installed: Installed) -> None:
    """Without systemd as PID 1 the init script starts the sensor as the unit would."""
    root = installed.root
    pidfile = root.file("/run/portsentry-sensor.pid")
    try:
        root.sh("unshare --net /etc/init.d/portsentry-sensor start", timeout=60)
        pid = pidfile.read_text().strip()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and capabilities(pid)[0] == 0:
            time.sleep(0.1)
        uid, effective, bounding = capabilities(pid)
        assert uid == int(root.sh(f"id -u {USER}").stdout)
        net_caps = (1 << 10) | (1 << 13)  # CAP_NET_BIND_SERVICE, CAP_NET_RAW
        assert effective == net_caps and bounding == net_caps, (hex(effective), hex(bounding))
        assert root.sh("/etc/init.d/portsentry-sensor status", check=False).returncode == 0
        root.sh("/etc/init.d/portsentry-sensor reload", timeout=60)
        time.sleep(0.5)
        assert Path(f"/proc/{pid}").exists(), "the sensor died on reload"
        root.sh("/etc/init.d/portsentry-sensor stop", timeout=60)
        assert not Path(f"/proc/{pid}").exists() and not pidfile.exists()
    finally:
        if pidfile.exists():
            subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False)


def test_reinstall_keeps_an_edited_conffile(installed: Installed, deb: Path) -> None:
    root = installed.root
    conf = root.file("/etc/portsentry-sensor/portsentry.conf")
    conf.write_text(conf.read_text() + '\n# admin edit\nSCAN_TRIGGER="3"\n')
    (root.file("/tmp") / deb.name).write_bytes(deb.read_bytes())
    root.sh(f"apt-get install -y --reinstall /tmp/{deb.name}", timeout=300)
    (root.file("/tmp") / deb.name).unlink()
    assert 'SCAN_TRIGGER="3"' in conf.read_text()
    root.sh("portsentry-sensor check --quiet")


def test_upgrade_keeps_admin_edits_the_user_and_the_jail(installed: Installed,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """An upgrade to a newer version: edited conffile kept silently, same user, unit enabled, jail up."""
    root = installed.root
    newer = build_deb("0.1.0+upgradetest1", tmp_path_factory.mktemp("newer"))
    ignore = root.file("/etc/portsentry-sensor/portsentry.ignore")
    ignore.write_text(ignore.read_text() + "203.0.113.0/24\n")
    uid = root.sh(f"id -u {USER}").stdout
    (root.file("/tmp") / newer.name).write_bytes(newer.read_bytes())
    result = root.sh(f"apt-get install -y /tmp/{newer.name}", timeout=300)
    (root.file("/tmp") / newer.name).unlink()
    assert "1 upgraded" in result.stdout, result.stdout
    assert root.sh(f"dpkg-query -W -f='${{Version}}' {PKG}").stdout == "0.1.0+upgradetest1"
    assert "203.0.113.0/24" in ignore.read_text()
    assert not list(root.file("/etc/portsentry-sensor").glob("*.dpkg-*"))
    assert root.sh(f"id -u {USER}").stdout == uid
    assert root.file("/etc/systemd/system/multi-user.target.wants/portsentry-sensor.service").is_symlink()
    assert root.sh("fail2ban-client status portsentry", check=False).returncode == 0
    root.sh("portsentry-sensor check --quiet")


def test_remove_keeps_the_conffiles_and_drops_the_code(installed: Installed) -> None:
    root = installed.root
    root.sh(f"apt-get remove -y {PKG}", timeout=300)
    assert not root.file("/usr/sbin/portsentry-sensor").exists()
    assert not root.file("/usr/share/portsentry-sensor").exists()
    for conffile in CONFFILES:
        assert root.file(conffile).exists(), conffile


def test_purge_leaves_nothing_of_ours(installed: Installed) -> None:
    """Done-when 3: after purge the root's files, users and /etc contents are as before install."""
    root = installed.root
    root.sh(f"apt-get purge -y {PKG}", timeout=300)
    after = root.snapshot()
    added = sorted(set(after) - set(installed.before))
    removed = sorted(set(installed.before) - set(after))
    changed = sorted(p for p in set(after) & set(installed.before) if after[p] != installed.before[p])
    assert not (added or removed or changed), f"added {added}\nremoved {removed}\nchanged {changed}"
    assert root.sh(f"getent passwd {USER}", check=False).returncode == 2
    assert root.sh(f"getent group {USER}", check=False).returncode == 2
    assert root.sh("fail2ban-client status portsentry", check=False).returncode != 0
