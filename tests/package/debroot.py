"""Fresh Debian roots for package tests: debootstrap once per suite, cache, chroot.

Installing the .deb on the dev machine proves nothing (everything is already
there); a minbase root made by debootstrap is what a user starts from.  Every
package test runs on both Debian stables this package supports (SUITES:
12 bookworm and 13 trixie).  debootstrap takes a minute or more through the
mirror, so each root is cached as a tarball under CACHE, a host directory
outside the repository (CI starts from a fresh clone each time, so a cache
inside it would never be reused), keyed by suite and package list.  The
cached root also holds the downloaded .debs of our dependencies (not
installed), so ``apt-get install ./our.deb`` resolves them as on a real
machine, without the network.  Two pytest sessions never build the same
tarball at once (a lock file per suite).  Services never start inside
(policy-rc.d).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from ci import in_ci

REPO = Path(__file__).resolve().parent.parent.parent
# Persistent across fresh clones (CI): override with PORTSENTRY_TEST_CACHE.
CACHE = Path(os.environ.get("PORTSENTRY_TEST_CACHE", "/var/cache/portsentry-sensor-tests"))
# Debian 12 (oldstable since August 2025) and Debian 13 (stable): both supported, both tested.
SUITES = ("bookworm", "trixie")
MIRROR = os.environ.get("PORTSENTRY_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# Our Depends (see packaging/debian/control), downloaded into the cached root.
DEPENDS = ("python3", "python3-systemd", "python3-watchdog", "python3-jinja2",
           "fail2ban", "nftables", "python3-nftables", "adduser",
           "python3-pygal")  # Recommends: apt installs it with the package by default
# What tools/install needs to build the package (its build dependencies).
BUILD_DEPENDS = ("debhelper", "dh-python", "dpkg-dev")
# systemd as init, for booting the root with systemd-nspawn.
INIT = ("systemd", "systemd-sysv")
# autopkgtest, to run packaging/debian/tests in the root (test_package_autopkgtest.py).
AUTOPKGTEST = ("autopkgtest",)
# Debian's own test tools, to run the unit and filter tests under the suite's
# Python (test_package_pytest.py); only trixie's 3.13 needs this (the host is
# bookworm with 3.11).  And trixie's lintian (the host's is bookworm's).
PYTEST = ("python3-pytest", "python3-pytest-timeout", "python3-hypothesis", "python3-pygal",
          "systemd-journal-remote")
# CrowdSec, for the portsentry-sensor-crowdsec package (test_package_crowdsec.py).
CROWDSEC = ("crowdsec",)
# Debian's node exporter, reading the packaged sensor's metrics (test_package_visibility.py).
NODE_EXPORTER = ("prometheus-node-exporter",)
# The e2e lab's tools (tests/e2e/lab.py TOOLS) besides those above, to run the CrowdSec fleet
# test with trixie's crowdsec, bouncer, Python and journald (test_package_crowdsec_fleet.py).
E2E_LAB = ("crowdsec-firewall-bouncer", "nmap", "iproute2", "iptables", "curl", *NODE_EXPORTER)
EXTRA = {"bookworm": AUTOPKGTEST + CROWDSEC + NODE_EXPORTER,
         "trixie": AUTOPKGTEST + CROWDSEC + PYTEST + ("lintian",) + E2E_LAB}
POLICY_RC_D = "#!/bin/sh\n# package tests: never start services in this root\nexit 101\n"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
       "DEBIAN_FRONTEND": "noninteractive"}
# Paths that change on their own (apt/dpkg bookkeeping, logs, caches, kernel fs).
VOLATILE = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache",
            "/var/lib/apt", "/var/lib/dpkg", "/root")
# Backups the shadow tools write on any user change; the files themselves are compared.
SHADOW_BACKUPS = ("/etc/passwd-", "/etc/group-", "/etc/shadow-", "/etc/gshadow-")


def prefetch(suite: str) -> tuple[str, ...]:
    """The packages whose .debs the cached root of ``suite`` holds."""
    return DEPENDS + BUILD_DEPENDS + INIT + EXTRA[suite]


def unavailable(reason: str) -> None:
    """Fail (CI) or skip (elsewhere): the package tests cannot run here."""
    if in_ci():
        pytest.fail(f"package test prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(f"package: {reason}")


def require(tools: Sequence[str], root: bool = True) -> None:
    """Root and the given tools, or unavailable()."""
    missing = [t for t in tools if shutil.which(t, path=ENV["PATH"]) is None]
    if root and os.geteuid() != 0:
        missing.insert(0, "root")
    if missing:
        unavailable("needs " + ", ".join(missing))


def run(args: Sequence[str], timeout: float = 600, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command on the host; on failure raise with its output."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                            env=env or ENV, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def cache_key(suite: str) -> str:
    """Changes whenever what the cached root of ``suite`` holds would change."""
    text = "\n".join((suite, MIRROR, "minbase", *prefetch(suite), "v1"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class DebianRoot:
    """An unpacked Debian root with /proc mounted; commands run in it via chroot."""

    def __init__(self, path: Path, suite: str) -> None:
        self.path = path
        self.suite = suite
        self.mounted = False

    def mount(self) -> None:
        """Mount /proc (dpkg, python and the sensor read it)."""
        run(["mount", "-t", "proc", "proc", str(self.path / "proc")])
        self.mounted = True

    def umount(self) -> None:
        """Unmount what mount() mounted."""
        if self.mounted:
            run(["umount", "-l", str(self.path / "proc")], check=False)
            self.mounted = False

    def sh(self, script: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a shell script inside the root as root."""
        return run(["chroot", str(self.path), "/bin/sh", "-ec", script], timeout=timeout, check=check)

    def file(self, path: str) -> Path:
        """Host path of a path inside the root."""
        return self.path / path.lstrip("/")

    def snapshot(self) -> dict[str, str]:
        """Every path outside VOLATILE with its type, mode and owner; /etc files with a hash."""
        prune = " -o ".join(f"-path {p}" for p in VOLATILE)
        listing = self.sh(f"find / -xdev \\( {prune} \\) -prune -o -printf '%p %y %m %u %g\\n'",
                          timeout=120).stdout
        entries: dict[str, str] = {}
        for line in listing.splitlines():
            name, _, rest = line.partition(" ")
            if name in VOLATILE or name in SHADOW_BACKUPS:
                continue
            entries[name] = rest
            if name.startswith("/etc/") and rest.startswith("f "):
                entries[name] += " " + hashlib.sha256(self.file(name).read_bytes()).hexdigest()[:16]
        return entries

    def destroy(self) -> None:
        """Unmount and delete the root (never across a still-mounted /proc)."""
        self.umount()
        if (self.path / "proc" / "self").exists():
            raise RuntimeError(f"{self.path}/proc is still mounted; not deleting")
        shutil.rmtree(self.path)


def _bootstrap(target: Path, suite: str) -> None:
    """debootstrap minbase ``suite``, forbid service starts, download our Depends."""
    for attempt in (1, 2):  # one retry: a mirror hiccup should not fail the suite
        result = run(["debootstrap", "--variant=minbase", suite, str(target), MIRROR], timeout=900,
                     check=attempt == 2)
        if result.returncode == 0:
            break
        shutil.rmtree(target)
    policy = target / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    root = DebianRoot(target, suite)
    root.mount()
    try:
        root.sh("apt-get update -qq && apt-get install -y -qq --download-only "
                + " ".join(prefetch(suite)), timeout=900)
    finally:
        root.umount()


@contextmanager
def locked(suite: str) -> Iterator[None]:
    """Hold CACHE/<suite>.lock: one pytest session at a time builds or prunes that suite's tarball."""
    with (CACHE / f"{suite}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def tarball_path(suite: str) -> Path:
    """Where the cached root of ``suite`` (with today's package list) lives."""
    return CACHE / f"{suite}-minbase-{cache_key(suite)}.tar"


def cached_root_tarball(suite: str) -> Path:
    """The cached tarball of a fresh ``suite`` root, made on first use.

    Under the suite's lock: a second session waits for the first one's
    tarball instead of debootstrapping the same root next to it, and old
    tarballs are deleted only while nobody is making a new one.  Unpacking
    needs no lock: a tarball appears by rename only when complete, and
    fresh_root() holds an open descriptor if a newer key deletes it.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = tarball_path(suite)
    if tarball.exists():
        return tarball
    with locked(suite):
        if tarball.exists():  # made by another session while we waited
            return tarball
        target = CACHE / f"build-{suite}-{os.getpid()}"
        if target.exists():
            shutil.rmtree(target)
        try:
            _bootstrap(target, suite)
            partial = tarball.with_suffix(".partial")
            run(["tar", "-C", str(target), "--numeric-owner", "-cf", str(partial), "."], timeout=600)
            partial.rename(tarball)
        finally:
            if target.exists() and not (target / "proc" / "self").exists():
                shutil.rmtree(target)
        for old in CACHE.glob(f"{suite}-minbase-*.tar"):
            if old != tarball:
                old.unlink()
    return tarball


def fresh_root(where: Path, suite: str) -> DebianRoot:
    """Unpack the cached ``suite`` root into ``where`` and mount /proc."""
    tarball = cached_root_tarball(suite)
    where.mkdir(parents=True)
    with tarball.open("rb") as stream:  # stays readable if another session replaces it
        result = subprocess.run(["tar", "-C", str(where), "--numeric-owner", "-xpf", "-"], stdin=stream,
                                capture_output=True, text=True, timeout=600, env=ENV, check=False)
    if result.returncode != 0:
        raise AssertionError(f"unpacking {tarball} into {where} failed: {result.stderr[-3000:]}")
    root = DebianRoot(where, suite)
    root.mount()
    return root


# What tools/build-deb reads from the source tree (copied into roots for tools/install).
SHIPPED = ("sensor", "etc", "fail2ban", "crowdsec", "catalog", "doc", "packaging", "tools")


def copy_source_tree(target: Path) -> None:
    """The parts of this tree that tools/install needs, without caches."""
    for name in SHIPPED:
        shutil.copytree(REPO / name, target / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_deb(version: str = "", dist: Path | None = None) -> Path:
    """tools/build-deb; returns the .deb it made (``version``: a newer test version, into ``dist``)."""
    env = dict(ENV)
    if version:
        env.update(PORTSENTRY_DEB_VERSION=version, PORTSENTRY_DEB_DIST=str(dist))
    result = run([str(REPO / "tools" / "build-deb")], timeout=600, env=env)
    return REPO / result.stdout.strip().splitlines()[-1]
