"""The daemon's lifecycle: start, watch, reload, stop.

Start: load and validate everything first (a ConfigError exits 2 before any
socket is opened), bind the tripwires, start raw capture if the plan needs it,
then tell systemd READY=1 with a STATUS line.  While running: summaries are
flushed every second, the advanced plan is re-read every PLAN_REFRESH seconds,
the ignore file is watched (python3-watchdog) and WATCHDOG=1 is sent when
systemd asks for it.  SIGHUP reloads everything; a broken config or ignore
file is reported and the previous one stays in force.  SIGTERM exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from sensor import sdnotify
from sensor.alert import PRIORITY_ERR, PRIORITY_NOTICE, PRIORITY_WARNING, Alert, format_admin, format_alert
from sensor.config import Config, ConfigError, load_config
from sensor.detector import Detector, DetectorSettings, Probe
from sensor.ignore import IgnoreFileError, IgnoreList, Network, local_addresses, local_networks, read_ignore_file
from sensor.listeners import BoundListeners, failure_lines, limit_summary
from sensor.metrics import Metrics
from sensor.portplan import PortPlan, build_plan, read_listening
from sensor.sinks import Emitter, sinks_for

EXIT_CONFIG = 2
EXIT_NOTHING_WATCHED = 1
RESOLVE_TIMEOUT = 2.0   # seconds a reverse lookup may take before the alert goes out without a name
SHUTDOWN_GRACE = 0.5    # seconds pending lookups get at shutdown
MAX_LOOKUPS = 16        # lookup threads at once (a hung one counts until it returns); beyond: no name


class Resolver:
    """Reverse-DNS lookups, each in a daemon thread, at most ``limit`` threads at a time.

    Daemon threads, not the loop's executor: a lookup that hangs in the C library never
    holds up the exit (asyncio.run and the interpreter join executor threads), and the
    thread count stays bounded even when lookups outlive their timeout.  Whatever the
    lookup raises (OSError, UnicodeDecodeError for a name that is not UTF-8, ...) is
    set on the future :meth:`start` returns.
    """

    def __init__(self, limit: int = MAX_LOOKUPS) -> None:
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()

    def busy(self) -> bool:
        """True when ``limit`` lookups are still under way (the caller goes on without a name)."""
        return self.running >= self.limit

    def start(self, address: str) -> asyncio.Future[str]:
        """Start looking up the reverse-DNS name of ``address``; the future has the name or the error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str] = loop.create_future()

        def settle(name: str, error: BaseException | None) -> None:
            if future.done():  # timed out or cancelled meanwhile
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(name)

        def work() -> None:
            name, error = "", None
            try:
                name = str(socket.gethostbyaddr(address)[0])
            except BaseException as exc:  # handed over to the loop, never lost in this thread
                error = exc
            finally:
                with self._lock:
                    self.running -= 1
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                loop.call_soon_threadsafe(settle, name, error)

        with self._lock:
            self.running += 1
        try:
            threading.Thread(target=work, name="portsentry-resolve", daemon=True).start()
        except BaseException as exc:
            with self._lock:
                self.running -= 1
            future.set_exception(exc)
        return future


class StartupError(Exception):
    """The sensor cannot start (nothing to watch); exit 1."""


@dataclass(frozen=True)
class Loaded:
    """A configuration together with its ignore list: both valid, or neither."""

    config: Config
    ignore: IgnoreList
    configured: tuple[Network, ...] = ()
    local: tuple[Network, ...] = ()   # this host's addresses the ignore list was built with

    def with_local(self, local: tuple[Network, ...]) -> Loaded:
        """The same configuration with this host's current addresses in the ignore list.

        The list is rebuilt only when those addresses changed (not on every PLAN_REFRESH).
        """
        if local == self.local:
            return self
        return Loaded(self.config, IgnoreList.build(self.configured, local), self.configured, local)


def load_all(path: str, defaults: Iterable[str] | None, proc: str = "/proc") -> Loaded:
    """Load config and ignore file; raises ConfigError or IgnoreFileError."""
    config = load_config(path, defaults)
    configured = read_ignore_file(config.ignore_file) if config.ignore_file else ()
    local = local_networks(proc)
    return Loaded(config, IgnoreList.build(configured, local), configured, local)


def detector_settings(config: Config) -> DetectorSettings:
    """The detector's knobs from a config."""
    return DetectorSettings(scan_trigger=config.scan_trigger, scan_window=float(config.scan_window),
                            summary_interval=float(config.summary_interval),
                            summary_max_lines=config.summary_max_lines,
                            max_sources=config.state_max_sources,
                            flood_sources=config.flood_sources, flood_ports=config.flood_ports,
                            ipv6_prefix=config.ipv6_prefix, ipv4_prefix=config.ipv4_prefix,
                            prefix_addresses=config.prefix_addresses)


def _ports(count: int) -> str:
    return f"{count} port" if count == 1 else f"{count} ports"


def describe(plan: PortPlan, bound_tcp: list[int], bound_udp: list[int]) -> str:
    """One STATUS line: what is watched."""
    parts = []
    for proto, bound in (("tcp", bound_tcp), ("udp", bound_udp)):
        if bound:
            parts.append(f"{proto} {_ports(len(bound))} bound")
        raw = plan.raw_ports(proto)
        if raw:
            parts.append(f"{plan.raw_mode(proto)} {_ports(len(raw))}")
    return "watching " + (", ".join(parts) if parts else "nothing")


class Sensor:
    """One running sensor."""

    def __init__(self, path: str, defaults: Iterable[str] | None = None,
                 stderr: bool = False, proc: str = "/proc") -> None:
        self.path, self.defaults, self.proc = path, defaults, proc
        self.loaded = load_all(path, defaults, proc)
        chain = sinks_for("stderr" if stderr else self.loaded.config.log_target)
        self.emitter = Emitter(chain)
        self.detector = Detector(detector_settings(self.loaded.config))
        self.detector.prefixes.ignore = lambda: self.loaded.ignore  # a prefix overlapping it is never alerted
        self.listeners = BoundListeners(self.on_probe, self.loaded.config.port_banner)
        self.capture: Any = None
        self.plan = PortPlan()
        self.stop_event: asyncio.Event | None = None
        self.observer: Any = None
        self.reloads = 0
        self.reload_task: asyncio.Task[None] | None = None
        self.unbound: set[tuple[str, int]] = set()   # bound-mode ports to retry
        self.reload_again = False
        self.lookups: set[asyncio.Task[None]] = set()  # RESOLVE_HOST lookups under way
        self.resolver = Resolver()
        self.metrics = Metrics()   # sensor/metrics.py: METRICS_DIR textfile

    # --- events ------------------------------------------------------------
    def admin(self, text: str, priority: int = PRIORITY_NOTICE) -> None:
        """A status line (never matches the fail2ban filter)."""
        self.emitter.emit(format_admin(text), {"PRIORITY": str(priority),
                                               "SYSLOG_IDENTIFIER": "portsentry-sensor"})

    def on_probe(self, probe: Probe) -> None:
        """Entry point of every listener: ignore list first, then the detector."""
        if probe.src in self.loaded.ignore:
            return
        for alert in self.detector.observe(probe, time.monotonic()):
            self.emit_alert(alert)
        if self.detector.flood.pending:
            self.flood_lines()

    def flood_lines(self) -> None:
        """The flood guard's start/report/end lines (sensor/flood.py), through admin()."""
        for text in self.detector.flood.drain():
            self.admin(text, PRIORITY_WARNING)

    def emit_alert(self, alert: Alert, resolve: bool = True) -> None:
        """Write one alert (resolving the source's name first if configured and ``resolve``).

        A name is a nicety, the alert is not: too many lookups at once, a failing lookup or
        the shutdown write the alert without one.
        """
        if (resolve and self.loaded.config.resolve_host and not alert.hostname and not alert.net
                and not self.resolver.busy()):
            lookup = self.resolver.start(alert.src)
            task = asyncio.get_running_loop().create_task(self._resolve_and_emit(alert, lookup))
            self.lookups.add(task)
            task.add_done_callback(self.lookups.discard)
            return
        self.metrics.alert(alert)
        message, fields = format_alert(alert)
        self.emitter.emit(message, fields)

    async def _resolve_and_emit(self, alert: Alert, lookup: asyncio.Future[str]) -> None:
        name = ""
        try:
            name = await asyncio.wait_for(lookup, timeout=RESOLVE_TIMEOUT)
        except asyncio.CancelledError:  # shutdown: the alert still goes out, without its name
            self.emit_alert(alert, resolve=False)
            raise
        except Exception:  # timeout, OSError, a name that is not UTF-8, ...: no name
            name = ""
        self.emit_alert(replace(alert, hostname=name), resolve=False)

    async def finish_lookups(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Give pending lookups ``grace`` seconds, then write their alerts without a name."""
        pending = set(self.lookups)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=grace)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)

    # --- plan ----------------------------------------------------------------
    def compute_plan(self) -> PortPlan:
        """The plan for the current config and the ports real services use now."""
        own_tcp = frozenset(self.listeners.watched("tcp"))
        own_udp = frozenset(self.listeners.watched("udp"))
        return build_plan(self.loaded.config, read_listening("tcp", self.proc),
                          read_listening("udp", self.proc), own_tcp, own_udp)

    async def apply_plan(self) -> None:
        """Bind/unbind tripwires and hand the raw plan to the capture."""
        plan = self.compute_plan()
        await self.bind(plan, quiet_repeats=False)
        self.plan = self.compute_plan()
        self._apply_capture()

    async def bind(self, plan: PortPlan, quiet_repeats: bool) -> None:
        """Bind the plan's tripwires; warn about ports that fail (once per port when retrying)."""
        tcp, udp = plan.tcp_bound, plan.udp_bound
        if quiet_repeats:  # a retry: what is bound now plus the ports worth retrying, nothing else
            tcp, udp = (tuple(sorted(set(self.listeners.watched(proto)) | {p for q, p in self.unbound if q == proto}))
                        for proto in ("tcp", "udp"))
        failures = await self.listeners.apply(tcp, udp, self.loaded.config.port_banner)
        others = [f for f in failures if not f.limit]
        fresh = [f for f in others if not quiet_repeats or (f.proto, f.port) not in self.unbound]
        for line in failure_lines(fresh):
            self.admin(f"warning: {line}", PRIORITY_WARNING)
        limited = [f for f in failures if f.limit]
        if limited:  # one line for all of them, and never retried before the next reload
            left_out: dict[str, list[int]] = {}
            for failure in limited:
                left_out.setdefault(failure.proto, []).append(failure.port)
            missing = sum(len(f.family.split(", ")) for f in limited)
            self.admin("warning: " + limit_summary(left_out, missing, self.listeners.limit or 0,
                                                   len(self.listeners.open)), PRIORITY_WARNING)
        watched = {proto: set(self.listeners.watched(proto)) for proto in ("tcp", "udp")}
        for proto, port in sorted(self.unbound):
            if port in watched[proto]:
                self.admin(f"{proto.upper()} port {port} is free now and watched")
        # Retry later only ports no service listens on (a TIME_WAIT left by PortSentry, say):
        # a real service's port is never taken over while that service restarts.
        listening = {"tcp": read_listening("tcp", self.proc), "udp": read_listening("udp", self.proc)}
        self.unbound = {(f.proto, f.port) for f in others if f.port not in listening[f.proto]}

    def _apply_capture(self) -> None:
        wants_raw = bool(self.plan.tcp_raw or self.plan.udp_raw)
        if not wants_raw:
            if self.capture is not None:
                self.capture.stop()
                self.capture = None
            return
        if self.capture is None:
            self.capture = self._start_capture()
            if self.capture is None:
                return
        self.capture.set_local(str(a) for a in local_addresses(self.proc))
        self.capture.set_plan(self.plan)

    def _start_capture(self) -> Any:
        try:
            from sensor.capture import RawCapture
        except ImportError:
            self.admin("warning: raw-socket capture is not available in this build", PRIORITY_WARNING)
            return None
        if not RawCapture.is_supported():
            self.admin("warning: no CAP_NET_RAW: stealth/advanced modes are off; "
                       "only bound modes (tcp/udp) work", PRIORITY_WARNING)
            return None
        capture = RawCapture(self.on_probe)
        capture.start(asyncio.get_running_loop())
        return capture

    def watching(self) -> int:
        """How many ports are watched by any means."""
        count = len(self.listeners.watched("tcp")) + len(self.listeners.watched("udp"))
        if self.capture is not None:
            count += len(self.plan.tcp_raw) + len(self.plan.udp_raw)
        return count

    def status(self) -> str:
        """The STATUS= text."""
        plan = self.plan if self.capture is not None else PortPlan()
        return describe(plan, self.listeners.watched("tcp"), self.listeners.watched("udp"))

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
            sdnotify.send(sdnotify.ready(self.status()))
            return
        self.loaded = loaded
        self.detector.settings = detector_settings(loaded.config)
        for warning in loaded.config.warnings:
            self.admin(f"warning: {warning}", PRIORITY_WARNING)
        await self.apply_plan()
        self._watch_ignore_file()
        self.admin(f"configuration reloaded from {self.path}; {self.status()}")
        sdnotify.send(sdnotify.ready(self.status()))

    def reload_ignore(self) -> None:
        """The ignore file changed: re-read it alone; keep the old list if broken."""
        config = self.loaded.config
        try:
            configured = read_ignore_file(config.ignore_file)
        except IgnoreFileError as exc:
            self.admin(f"ignore file not reloaded, keeping the previous list: {exc}", PRIORITY_ERR)
            return
        local = local_networks(self.proc)
        ignore = IgnoreList.build(configured, local)
        if ignore != self.loaded.ignore:
            self.loaded = Loaded(config, ignore, configured, local)
            self.admin(f"ignore list reloaded from {config.ignore_file}: {len(configured)} entries")

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
            for alert in self.detector.flush(now):
                self.emit_alert(alert)
            self.flood_lines()
            self.emitter.retry()
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
        if self.unbound:  # e.g. a port PortSentry left in TIME_WAIT: retry it quietly
            await self.bind(self.plan, quiet_repeats=True)
        if not (self.plan.tcp_raw_mode or self.plan.udp_raw_mode):
            return
        plan = self.compute_plan()
        if plan != self.plan:
            self.plan = plan
            self._apply_capture()

    def capture_stats(self) -> str:
        """The raw capture's counters, for the stop and reload lines."""
        if self.capture is None:
            return ""
        with contextlib.suppress(Exception):
            self.capture.kernel_drops()
        stats = getattr(self.capture, "stats", {})
        return "; capture: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.items()))

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        loop = asyncio.get_running_loop()
        self.stop_event = asyncio.Event()
        for warning in self.loaded.config.warnings:
            self.admin(f"warning: {warning}", PRIORITY_WARNING)
        await self.apply_plan()
        if self.watching() == 0:
            self.listeners.close()
            raise StartupError("no port could be watched (see the warnings above)")
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        self._watch_ignore_file()
        self.admin(f"started, {self.status()}")
        sdnotify.send(sdnotify.ready(self.status()))
        await self.tick()
        sdnotify.send(sdnotify.stopping())
        stats = self.capture_stats()
        self.stop_inputs()
        await self.finish_lookups()  # alerts already under way go out first, in order
        self.shutdown()
        self.admin(f"stopped{stats}")
        return 0

    def stop_inputs(self) -> None:
        """Close sockets and stop the file watch: no new probe after this (idempotent)."""
        if self.observer is not None:
            self.observer.stop()
            self.observer = None
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
        self.listeners.close()

    def shutdown(self) -> None:
        """Close sockets, stop threads, write what is still queued (closing summaries without a name)."""
        self.stop_inputs()
        for alert in self.detector.flush(float("inf")):
            self.emit_alert(alert, resolve=False)
        self.emitter.retry()


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
