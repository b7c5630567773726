"""The CrowdSec fleet test on Debian 13: trixie's crowdsec, bouncer, Python and journald.

tests/e2e/test_crowdsec.py tells the story (host A: LAPI + agent + sensor + bouncer;
host B: agent + sensor + bouncer; a scan of A blocks the scanner on B, ``cscli decisions
delete`` lifts it, a forged ``logger`` line bans nobody, the ladder escalates) with the
host's packages, i.e. Debian 12.  Here the same test module runs unchanged inside a
fresh trixie root (from the cache: tests/package/debroot.py, E2E_LAB), so every program
it starts is trixie's: crowdsec 1.4.6 and crowdsec-firewall-bouncer 0.0.25 as trixie
builds them, python3 3.13 for the sensor and pytest, systemd 257's journald, nmap, nft.

How the root is entered, and why it is safe:
- ``unshare --net --mount``: the whole run lives in a fresh, empty network namespace
  (only loopback) and a private mount namespace.  A chroot alone would share the host's
  root network namespace; here even a bug that started a bouncer outside the lab's
  namespaces could not touch the host's firewall, routes or addresses.  The lab's own
  namespaces (``ip netns add`` inside the root) hang off nothing but that mount namespace.
- The root is bind-mounted on itself, so that ``/`` in the chroot is a mount point
  (``ip netns exec`` makes ``/`` a slave mount, which fails on a plain directory), with
  its own /proc, /sys (the host's /sys/fs/cgroup read-only in it: journald exits without
  a cgroup root) and a private tmpfs on /run: the lab finds no journald socket there
  and starts the root's own systemd-journald (tests/e2e/lab.py Journal), whose journal
  the crowdsec agents read with the root's journalctl.  /dev is the host's (device nodes).
- When the run ends (or times out), every process still running with its root in the
  Debian root is killed by PID, and the mount namespace, with the lab's namespaces,
  goes away with the last of them.

CI=true is passed in, so a skip in there is a failure (tests/e2e/conftest.py), and the
test here also asserts that every test of the module ran and passed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from debroot import E2E_LAB, ENV, REPO, DebianRoot, require, run

pytestmark = pytest.mark.package

MODULE = "tests/e2e/test_crowdsec.py"
# What runs in the root: the sensor, the pack, and the e2e lab with the fleet test module.
COPIED = ("sensor", "crowdsec", "tools/icmp-echo", "setup.cfg", "tests/conftest.py", "tests/ci.py",
          "tests/pristine.py", "tests/repopaths.py", "tests/e2e/conftest.py", "tests/e2e/lab.py",
          "tests/e2e/crowdsec.py", MODULE)
# Installed from the cached .debs: the lab's tools (tests/e2e/lab.py TOOLS), the sensor's
# runtime Depends, pytest, and systemd for journald.
PACKAGES = (*E2E_LAB, "crowdsec", "nftables", "fail2ban", "systemd", "python3-systemd", "python3-watchdog",
            "python3-jinja2", "python3-pytest", "python3-pytest-timeout")
VERSIONS = {"crowdsec": "1.4.6", "crowdsec-firewall-bouncer": "0.0.25", "systemd": "257"}
ENTER = """\
ip link set lo up
R="$1"; shift
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount --bind /sys/fs/cgroup "$R/sys/fs/cgroup"
mount -o remount,bind,ro "$R/sys/fs/cgroup"
mount --bind /dev "$R/dev"
mount -t tmpfs -o mode=0755 tmpfs "$R/run"
exec chroot "$R" /usr/bin/env -i "$@"
"""
INNER = """\
if [ -e /run/systemd/journal/socket ]; then echo 'a journald socket before the lab started one'; exit 97; fi
cd /src
python3 -m pytest -p no:cacheprovider -q -rfEsP {module} 2>&1
"""


@pytest.fixture(scope="module", params=("trixie",))
def suite(request: pytest.FixtureRequest) -> str:
    """Overrides conftest's suite: the host runs the fleet on bookworm, a root brings trixie."""
    return str(request.param)


def copy_tree(target: Path) -> None:
    """The files of COPIED, without caches."""
    for name in COPIED:
        source, dest = REPO / name, target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, dest)


def processes_in(root: Path) -> list[int]:
    """PIDs of the processes whose root directory is ``root``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(root):
                    found.append(int(entry.name))
    return found


def kill_processes_in(root: Path) -> list[int]:
    """SIGTERM, then SIGKILL, whatever still runs chrooted in ``root``; returns the PIDs found."""
    found = processes_in(root)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_in(root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        time.sleep(1)
    return found


@pytest.fixture(scope="module")
def fleet_run(debian_root: DebianRoot) -> Iterator[subprocess.CompletedProcess[str]]:
    """The fleet test module, run by trixie's pytest inside the root (see the module docstring)."""
    require(["unshare", "ip", "chroot", "mount"])
    root = debian_root
    root.sh("mkdir -p /etc/crowdsec && echo '# Central API off (offline test root)' "
            "> /etc/crowdsec/online_api_credentials.yaml")
    # Offline: apt takes the cached .debs; no maintainer script can reach the network.
    root.sh("unshare --net apt-get install -y -qq --no-install-recommends " + " ".join(PACKAGES), timeout=900)
    copy_tree(root.file("/src"))
    env = [f"{key}={value}" for key, value in ENV.items()] + ["CI=true", "PYTHONDONTWRITEBYTECODE=1"]
    try:
        yield run(["unshare", "--net", "--mount", "--propagation", "private", "/bin/sh", "-ec", ENTER, "enter",
                   str(root.path), *env, "/bin/sh", "-c", INNER.format(module=MODULE)],
                  check=False, timeout=1200)
    finally:
        leftover = kill_processes_in(root.path)
        assert not leftover, f"processes left running in the root after the run: {leftover}"


def test_the_root_has_trixies_crowdsec_bouncer_python_and_systemd(
        debian_root: DebianRoot, fleet_run: subprocess.CompletedProcess[str]) -> None:
    out = debian_root.sh("dpkg-query -W -f='${Package} ${Version}\\n' " + " ".join(VERSIONS)).stdout
    for package, version in VERSIONS.items():
        assert re.search(rf"^{package} {re.escape(version)}", out, re.M), out
    python = debian_root.sh("python3 -c 'import sys; print(sys.version_info[:2])'").stdout
    assert "(3, 13)" in python, python


def test_the_fleet_test_passes_on_trixie(fleet_run: subprocess.CompletedProcess[str]) -> None:
    out = fleet_run.stdout + fleet_run.stderr
    assert fleet_run.returncode == 0, out[-8000:]
    summary = out.strip().splitlines()[-1]
    tests = len(re.findall(r"^def test_", (REPO / MODULE).read_text(), re.M))
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) == tests, summary
    assert not re.search(r"failed|error|skipped", summary), out[-8000:]
    blocked = re.search(r"scan of A -> blocked on B after ([\d.]+) s", out)
    assert blocked, out[-8000:]
    print(f"trixie: scan of A -> blocked on B after {blocked.group(1)} s")
