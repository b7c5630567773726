"""Fixtures of the e2e lab, and the CI rule: a skipped e2e test is a failure.

See tests/e2e/lab.py for the lab itself.  In CI (CI=true) every e2e test must
run: a skip of an item marked ``e2e`` (from a fixture, a mark or the test) is
turned into a failure that keeps the skip reason.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

import pytest
from lab import Journal, ensure_user, in_ci, require_e2e


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """In CI, report a skipped e2e test as failed."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and item.get_closest_marker("e2e") is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"e2e test skipped in CI (CI=true), which counts as a failure: {reason}"


@pytest.fixture(autouse=True)
def _e2e_prerequisites(request: pytest.FixtureRequest) -> None:
    """Every e2e test checks root and tools first (skip outside CI, fail in CI)."""
    if request.node.get_closest_marker("e2e") is not None:
        require_e2e()


@pytest.fixture(scope="session")
def journald() -> Iterator[Journal]:
    """A running systemd-journald (standalone if none runs), stopped only if we started it."""
    require_e2e()
    journal = Journal().start()
    try:
        yield journal
    finally:
        journal.stop()


@pytest.fixture(scope="session")
def sensor_user() -> tuple[str, int, int]:
    """The sensor's system user (name, uid, gid), created if missing."""
    require_e2e()
    return ensure_user()
