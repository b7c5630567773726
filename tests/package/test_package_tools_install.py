"""README Quick start: `tools/install` on a fresh Debian 12 or 13 without systemd as PID 1.

The story: a root on a fresh minbase bookworm or trixie (debootstrap), the source tree
copied in, `tools/install` run as root.  It builds the .deb there, installs it
with apt, and ends with the sensor running (started the way the unit would:
user portsentry-sensor, two capabilities) and `fail2ban-client status
portsentry` answering.  It runs in a network namespace of its own, so the
fail2ban it starts keeps its nftables rules away from the host.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from debroot import BUILD_DEPENDS, REPO, DebianRoot, copy_source_tree

pytestmark = pytest.mark.package

@pytest.fixture(scope="module")
def quick_start(debian_root: DebianRoot) -> Iterator[subprocess.CompletedProcess[str]]:
    """tools/install run once in the fresh root; services stopped afterwards."""
    root = debian_root
    copy_source_tree(root.file("/src"))
    # Build dependencies from the root's cached .debs (tools/install would fetch
    # them itself; the namespace below has no network).
    root.sh("apt-get install -y -qq --no-install-recommends " + " ".join(BUILD_DEPENDS), timeout=600)
    try:
        yield root.sh("unshare --net /src/tools/install 2>&1", timeout=900, check=False)
    finally:
        root.sh("/etc/init.d/portsentry-sensor stop", check=False, timeout=60)
        root.sh("fail2ban-client -q stop", check=False, timeout=60)
        for pidfile in ("/run/portsentry-sensor.pid", "/run/fail2ban/fail2ban.pid"):
            path = root.file(pidfile)
            if path.exists() and path.read_text().strip().isdigit():
                subprocess.run(["kill", "-9", path.read_text().strip()], check=False)


def test_tools_install_ends_with_the_jail_answering(quick_start: subprocess.CompletedProcess[str]) -> None:
    out = quick_start.stdout
    assert quick_start.returncode == 0, out[-4000:]
    assert "Status for the jail: portsentry" in out, out[-4000:]
    assert "systemd is not PID 1 here" in out


def test_tools_install_leaves_the_sensor_running(debian_root: DebianRoot,
                                                 quick_start: subprocess.CompletedProcess[str]) -> None:
    status = debian_root.sh("/etc/init.d/portsentry-sensor status", check=False)
    assert status.returncode == 0, status.stdout + status.stderr + quick_start.stdout[-2000:]
    pid = debian_root.file("/run/portsentry-sensor.pid").read_text().strip()
    uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("Uid:"))
    assert uid == debian_root.sh("id -u portsentry-sensor").stdout.strip()


def test_tools_install_matches_the_sensor_by_uid_without_a_unit(debian_root: DebianRoot) -> None:
    local = debian_root.file("/etc/fail2ban/jail.d/portsentry.local").read_text()
    uid = debian_root.sh("id -u portsentry-sensor").stdout.strip()
    assert f"journalmatch = _UID={uid}" in local


def test_tools_install_handles_the_suites_sshd_jail(debian_root: DebianRoot,
                                                   quick_start: subprocess.CompletedProcess[str]) -> None:
    """Debian 12's [sshd] wants /var/log/auth.log (the script points it at the journal); 13's reads the journal."""
    written = debian_root.file("/etc/fail2ban/jail.d/sshd-journal.local").exists()
    if debian_root.suite == "bookworm":
        assert written and "sshd-journal.local" in quick_start.stdout, quick_start.stdout[-2000:]
    else:
        assert not written and "sshd-journal.local" not in quick_start.stdout, quick_start.stdout[-2000:]
        dump = debian_root.sh("fail2ban-client -d").stdout
        assert "['add', 'sshd', 'systemd']" in dump, dump[-2000:]


def test_setup_env_packages_exist_in_the_suite(debian_root: DebianRoot) -> None:
    """tools/test's first step (tools/setup-env) finds every package it installs in this suite too."""
    text = (REPO / "tools" / "setup-env").read_text()
    match = re.search(r'^APT_PACKAGES="([^"]*)"', text, re.M)
    assert match, "no APT_PACKAGES in tools/setup-env"
    packages = match.group(1).replace("\\\n", " ").split()
    # A simulation against the root's package lists (from the cache): names and dependencies resolve.
    result = debian_root.sh("apt-get install -s -qq --no-install-recommends " + " ".join(packages), check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
