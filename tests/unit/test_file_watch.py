"""sensor/daemon.py start_file_watch: the ignore file is re-read when it changes, never when it is read.

python3-watchdog 6.0 (Debian 13) also reports opening and closing a file
without writing it (inotify IN_OPEN, IN_CLOSE_NOWRITE); 2.2 (Debian 12) does
not.  A watch that reacted to those re-read the file on every read, and its
own read caused the next two events: on Debian 13 the first
`portsentry-sensor check` after start (tools/install runs one) set off a
storm that starved the event loop until the systemd watchdog killed the
sensor.  Found by tests/package/test_package_systemd.py on trixie.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sensor import daemon

pytest.importorskip("watchdog")


class Recorder:
    """A stand-in loop: counts what the watch would schedule."""

    def __init__(self) -> None:
        self.calls = 0

    def call_soon_threadsafe(self, callback: Any) -> None:
        self.calls += 1


def handler_of(path: Path, loop: Recorder, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The event handler start_file_watch installs (the observer is not started)."""
    from watchdog.observers.api import BaseObserver
    seen: list[Any] = []
    monkeypatch.setattr(BaseObserver, "schedule", lambda self, handler, *a, **k: seen.append(handler))
    monkeypatch.setattr(BaseObserver, "start", lambda self: None)
    daemon.start_file_watch(str(path), loop, lambda: None)  # type: ignore[arg-type]
    return seen[0]


@pytest.mark.parametrize("kind", ["opened", "closed_no_write"])
def test_reading_the_file_is_not_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    path = tmp_path / "portsentry.ignore"
    path.write_text("192.0.2.0/24\n")
    loop = Recorder()
    handler = handler_of(path, loop, monkeypatch)
    handler.on_any_event(SimpleNamespace(event_type=kind, src_path=str(path), dest_path="", is_directory=False))
    assert loop.calls == 0


@pytest.mark.parametrize("kind", ["modified", "closed", "created", "deleted", "moved"])
def test_writing_replacing_or_removing_the_file_is_a_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             kind: str) -> None:
    path = tmp_path / "portsentry.ignore"
    loop = Recorder()
    handler = handler_of(path, loop, monkeypatch)
    handler.on_any_event(SimpleNamespace(event_type=kind, src_path=str(path), dest_path="", is_directory=False))
    assert loop.calls == 1


def test_real_inotify_reads_do_not_trigger_and_a_write_does(tmp_path: Path) -> None:
    """With the installed python3-watchdog and the kernel's inotify, end to end."""
    path = tmp_path / "portsentry.ignore"
    path.write_text("192.0.2.0/24\n")

    async def scenario() -> tuple[int, int]:
        calls = 0

        def changed() -> None:
            nonlocal calls
            calls += 1

        observer = daemon.start_file_watch(str(path), asyncio.get_running_loop(), changed)
        try:
            await asyncio.sleep(0.3)
            for _ in range(5):
                path.read_text()
            await asyncio.sleep(1.0)
            after_reads = calls
            path.write_text("192.0.2.0/24\n198.51.100.0/24\n")
            deadline = time.monotonic() + 5
            while calls == after_reads and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return after_reads, calls
        finally:
            observer.stop()
            observer.join(timeout=5)

    after_reads, after_write = asyncio.run(scenario())
    assert after_reads == 0, f"{after_reads} reloads from reading the file"
    assert after_write > after_reads, "a write was not noticed"
