"""The debootstrap tarball cache: outside the repository, one per suite, built once under a lock.

Two pytest sessions on one machine (say two CI runs, or a developer's run next
to CI) must not debootstrap the same root side by side into the same cache;
the second waits for the first's tarball and uses it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import debroot
import pytest

pytestmark = pytest.mark.package


def test_the_cache_lives_outside_the_repository() -> None:
    assert debroot.REPO not in debroot.CACHE.parents and debroot.CACHE != debroot.REPO
    assert set(debroot.SUITES) == {"bookworm", "trixie"}
    assert debroot.cache_key("bookworm") != debroot.cache_key("trixie")


def test_two_sessions_build_one_tarball(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []

    def fake_bootstrap(target: Path, suite: str) -> None:
        builds.append(suite)
        target.mkdir(parents=True)
        time.sleep(0.5)  # long enough for the other session to arrive meanwhile
        (target / "etc").mkdir()
        (target / "etc" / "debian_version").write_text("test\n")

    monkeypatch.setattr(debroot, "CACHE", tmp_path)
    monkeypatch.setattr(debroot, "_bootstrap", fake_bootstrap)
    results: list[Path] = []
    sessions = [threading.Thread(target=lambda: results.append(debroot.cached_root_tarball("trixie")))
                for _ in range(2)]
    for session in sessions:
        session.start()
    for session in sessions:
        session.join(timeout=60)
    assert builds == ["trixie"], builds
    assert len(results) == 2 and results[0] == results[1] == debroot.tarball_path("trixie")
    assert results[0].is_file()
    assert not list(tmp_path.glob("build-*")) and not list(tmp_path.glob("*.partial"))
