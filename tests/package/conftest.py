"""Fixtures of the package tests: the built .deb and a fresh Debian root per suite.

Every test that takes ``debian_root`` runs once per suite in debroot.SUITES
(bookworm, trixie; ids ``[bookworm]``, ``[trixie]``; ``-k trixie`` picks one),
module by module: all of a module's tests on one root, then on the next.  The
one ``_all.deb`` built on this host is installed on both.

In CI (CI=true) every test marked ``package`` must run: a skip is reported as
a failure that keeps the reason.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from ci import in_ci
from debroot import SUITES, DebianRoot, build_deb, fresh_root, require


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """In CI, report a skipped package test as failed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and item.get_closest_marker("package") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"package test skipped in CI (CI=true), which counts as a failure: {reason}"


@pytest.fixture(scope="session")
def deb() -> Path:
    """dist/portsentry-sensor_<version>_all.deb, built once per session by tools/build-deb."""
    require(["dpkg-buildpackage", "dh", "dh_python3", "fakeroot", "dpkg-deb", "systemd-analyze"], root=False)
    return build_deb()


@pytest.fixture(scope="module", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian suite of this module's root: each of SUITES in turn."""
    return str(request.param)


@pytest.fixture(scope="module")
def debian_root(suite: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DebianRoot]:
    """A fresh minbase root of ``suite`` (from the cache), deleted afterwards."""
    require(["debootstrap", "chroot", "mount", "umount", "tar", "kill", "sleep"])
    root = fresh_root(tmp_path_factory.mktemp(f"debroot-{suite}") / "root", suite)
    try:
        yield root
    finally:
        root.destroy()
