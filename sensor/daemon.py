"""The daemon's lifecycle: start, watch, reload, stop.

Start: load and validate everything first (a ConfigError exits 2 before any
socket is opened), bind the tripwires, start raw capture if the plan needs it,
then tell systemd READY=1 with a STATUS line.  While running: summaries are
flushed every second, the advanced plan is re-read every PLAN_REFRESH seconds,
the ignore file is watched (python3-watchdog) and WATCHDOG=1 is sent when
systemd asks for it.  SIGHUP reloads everything; a broken config or ignore
file is reported and the previous one stays in force.  SIGTERM exits 0.

This module is the lifecycle only: probes travel the event path
(sensor/events.py: ignore list, detector, name lookup, alert line, emitter) and
the watchers (sensor/watch.py: tripwires, raw capture, plan, ports to retry)
produce them; the configuration with its ignore list is sensor/loaded.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Iterable
from typing import Any

from sensor import sdnotify
from sensor.alert import PRIORITY_ERR, START_MESSAGE_ID
from sensor.config import ConfigError
from sensor.detector import Detector
from sensor.events import EventPath, detector_settings
from sensor.ignore import IgnoreFileError, local_networks
from sensor.listeners import BoundListeners
from sensor.loaded import load_all
from sensor.portplan import PortPlan
from sensor.raw.capture import RawCapture
from sensor.sinks import sinks_for
from sensor.watch import Watchers

EXIT_CONFIG = 2
EXIT_NOTHING_WATCHED = 1


class StartupError(Exception):
    """The sensor cannot start (nothing to watch); exit 1."""


class Sensor:
    """One running sensor: its lifecycle, around the event path and the watchers."""

    def __init__(self, path: str, defaults: Iterable[str] | None = None,
                 stderr: bool = False, proc: str = "/proc") -> None:
        self.path, self.defaults, self.proc = path, defaults, proc
        self.loaded = load_all(path, defaults, proc)
        self.events = EventPath(lambda: self.loaded, sinks_for("stderr" if stderr else self.loaded.config.log_target))
        self.watch = Watchers(self.events.on_probe, self.events.admin, self.events.warn,
                              self.loaded.config.port_banner, proc)
        self.admin, self.warn, self.on_probe = self.events.admin, self.events.warn, self.events.on_probe
        self.emit_alert, self.metrics, self.resolver = self.events.emit_alert, self.events.metrics, self.events.resolver
        self.stop_event: asyncio.Event | None = None
        self.observer: Any = None
        self.reloads = 0
        self.reload_task: asyncio.Task[None] | None = None
        self.reload_again = False

    # What sensor/metrics.py and the tests read: the parts, by their old names.
    emitter = property(lambda self: self.events.emitter, lambda self, value: setattr(self.events, "emitter", value))
    detector: Detector = property(lambda self: self.events.detector)  # type: ignore[assignment]
    listeners: BoundListeners = property(lambda self: self.watch.listeners)  # type: ignore[assignment]
    capture: RawCapture | None = property(lambda self: self.watch.capture)  # type: ignore[assignment]
    plan: PortPlan = property(lambda self: self.watch.plan)  # type: ignore[assignment]

    async def apply_plan(self) -> None:
        """Bind/unbind tripwires and hand the raw plan to the capture."""
        await self.watch.apply(self.loaded.config)

    # --- reload ----------------------------------------------------------------
    def request_reload(self) -> None:
        """SIGHUP handler: one reload at a time; a storm of signals coalesces into one more."""
        if self.reload_task is not None and not self.reload_task.done():
            self.reload_again = True
            return
        self.reload_task = asyncio.get_running_loop().create_task(self._reload_loop())

    async def _reload_loop(self) -> None:
        while True:
            self.reload_again = False
            await self.reload()
            if not self.reload_again:
                return

    async def reload(self) -> None:
        """SIGHUP: load everything again; on error keep the previous state."""
        self.reloads += 1
        sdnotify.send(sdnotify.reloading())
        try:
            loaded = load_all(self.path, self.defaults, self.proc)
        except (ConfigError, IgnoreFileError) as exc:
            self.admin(f"reload failed, keeping the previous configuration: {exc}", PRIORITY_ERR)
            sdnotify.send(sdnotify.ready(self.watch.status()))
            return
        self.loaded = loaded
        self.detector.settings = detector_settings(loaded.config)
        for warning in loaded.config.warnings:
            self.warn(warning)
        await self.apply_plan()
        self._watch_ignore_file()
        self.admin(f"configuration reloaded from {self.path}; {self.watch.status()}")
        sdnotify.send(sdnotify.ready(self.watch.status()))

    def reload_ignore(self) -> None:
        """The ignore file changed: re-read it alone; keep the old list if broken."""
        try:
            loaded = self.loaded.reread_ignore(self.proc)
        except IgnoreFileError as exc:
            self.admin(f"ignore file not reloaded, keeping the previous list: {exc}", PRIORITY_ERR)
            return
        if loaded.ignore != self.loaded.ignore:
            self.loaded = loaded
            self.admin(f"ignore list reloaded from {loaded.config.ignore_file}: {len(loaded.configured)} entries")

    def _watch_ignore_file(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        path = self.loaded.config.ignore_file
        if not path or not os.path.isdir(os.path.dirname(path)):
            return
        self.observer = start_file_watch(path, asyncio.get_running_loop(), self.reload_ignore)

    # --- main loop ---------------------------------------------------------------
    async def tick(self) -> None:
        """Once a second: summaries, log retries, plan refresh, watchdog."""
        interval = sdnotify.watchdog_interval()
        last_refresh = last_ping = time.monotonic()
        assert self.stop_event is not None
        while not self.stop_event.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=1.0)
            now = time.monotonic()
            self.events.flush(now)
            self.metrics.tick(self, now)
            if now - last_refresh >= self.loaded.config.plan_refresh:
                last_refresh = now
                await self.refresh_plan()
            if interval is not None and now - last_ping >= interval:
                last_ping = now
                sdnotify.send(sdnotify.watchdog())

    async def refresh_plan(self) -> None:
        """Follow real services starting and stopping, and this host's addresses changing."""
        local = local_networks(self.proc)
        moved = self.loaded.with_local(local)
        if moved is not self.loaded:
            self.loaded = moved
            if self.capture is not None:
                self.capture.set_local(str(n.network_address) for n in local)
        await self.watch.refresh(self.loaded.config, self.loaded.config.port_banner)

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for warning in self.loaded.config.warnings:
            self.warn(warning)
        await self.apply_plan()
        if self.watch.watching() == 0:
            self.listeners.close()
            raise StartupError("no port could be watched (see the warnings above)")
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._watch_ignore_file()
        self.admin(f"started, {self.watch.status()}", message_id=START_MESSAGE_ID)
        sdnotify.send(sdnotify.ready(self.watch.status()))
        await self.tick()
        sdnotify.send(sdnotify.stopping())
        stats = self.watch.capture_stats()
        self.stop_inputs()
        await self.events.finish_lookups()  # alerts already under way go out first, in order
        self.shutdown()
        self.admin(f"stopped{stats}")
        return 0

    def stop_inputs(self) -> None:
        """Close sockets and stop the file watch: no new probe after this (idempotent)."""
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        self.watch.close()

    def shutdown(self) -> None:
        """Close sockets, stop threads, write what is still queued (closing summaries without a name)."""
        self.stop_inputs()
        self.events.close()


# watchdog's event types that mean the file's content may differ ("closed": after a write).
FILE_CHANGES = frozenset({"created", "deleted", "modified", "moved", "closed"})


def start_file_watch(path: str, loop: asyncio.AbstractEventLoop, callback: Any) -> Any:
    """Call ``callback`` in the loop when ``path`` is written, replaced or removed."""
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None
    target = os.path.realpath(path)

    class Handler(FileSystemEventHandler):  # type: ignore[misc,unused-ignore]
        def on_any_event(self, event: Any) -> None:
            # Only changes: python3-watchdog 6.0 (Debian 13) also reports "opened" and
            # "closed_no_write", and our own re-read would then trigger the next one, forever.
            if getattr(event, "event_type", "") not in FILE_CHANGES:
                return
            paths = {os.path.realpath(str(getattr(event, a, "") or "")) for a in ("src_path", "dest_path")}
            if target in paths:
                loop.call_soon_threadsafe(callback)

    observer: Any = Observer()  # type: ignore[no-untyped-call,unused-ignore]
    observer.schedule(Handler(), os.path.dirname(target) or ".", recursive=False)
    observer.daemon = True
    observer.start()
    return observer


def raise_fd_limit() -> None:
    """Bound mode needs two descriptors per port: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run(path: str, defaults: Iterable[str] | None = None, stderr: bool = False) -> int:
    """``portsentry-sensor run``: exit 0 on SIGTERM, 2 on bad config, 1 if nothing watched."""
    raise_fd_limit()
    try:
        sensor = Sensor(path, defaults, stderr)
    except (ConfigError, IgnoreFileError) as exc:
        print(f"portsentry-sensor: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asyncio.run(sensor.run())
    except StartupError as exc:
        print(f"portsentry-sensor: {exc}", file=sys.stderr)
        return EXIT_NOTHING_WATCHED
    finally:
        del sensor
