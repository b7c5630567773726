"""The event path: ignore list -> detector -> name lookup -> alert line -> emitter.

Every watcher (sensor/listeners.py, sensor/raw/capture.py) calls
:meth:`EventPath.on_probe`; status lines (``adminalert:``) go out through
:meth:`EventPath.admin`, the one status channel of the daemon (the raw capture's
warnings included, via :meth:`EventPath.warn`).  RESOLVE_HOST lookups run in
bounded daemon threads (:class:`Resolver`): a name is a nicety, the alert is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from sensor.alert import (
    FLOOD_MESSAGE_ID,
    PRIORITY_NOTICE,
    PRIORITY_WARNING,
    SYSLOG_IDENTIFIER,
    Alert,
    format_admin,
    format_alert,
)
from sensor.config import Config
from sensor.detector import Detector
from sensor.loaded import Loaded
from sensor.metrics import Metrics
from sensor.probe import Probe
from sensor.settings import DetectorSettings
from sensor.sinks import AlertSink, Emitter

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


def detector_settings(config: Config) -> DetectorSettings:
    """The detector's knobs from a config."""
    return DetectorSettings(scan_trigger=config.scan_trigger, scan_window=float(config.scan_window),
                            summary_interval=float(config.summary_interval),
                            summary_max_lines=config.summary_max_lines,
                            max_sources=config.state_max_sources,
                            flood_sources=config.flood_sources, flood_ports=config.flood_ports,
                            ipv6_prefix=config.ipv6_prefix, ipv4_prefix=config.ipv4_prefix,
                            prefix_addresses=config.prefix_addresses)


class EventPath:
    """From a probe to a written line; ``loaded`` gives the current configuration and ignore list."""

    def __init__(self, loaded: Callable[[], Loaded], sinks: Sequence[AlertSink]) -> None:
        self.loaded = loaded
        self.emitter = Emitter(sinks)
        self.detector = Detector(detector_settings(loaded().config))
        self.detector.prefixes.ignore = lambda: loaded().ignore  # a prefix overlapping it is never alerted
        self.lookups: set[asyncio.Task[None]] = set()  # RESOLVE_HOST lookups under way
        self.resolver = Resolver()
        self.metrics = Metrics()   # sensor/metrics.py: METRICS_DIR textfile

    def admin(self, text: str, priority: int = PRIORITY_NOTICE, message_id: str = "") -> None:
        """A status line (never matches the fail2ban filter); ``message_id`` for those in the catalog."""
        fields = {"PRIORITY": str(priority), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}
        if message_id:
            fields["MESSAGE_ID"] = message_id
        self.emitter.emit(format_admin(text), fields)

    def warn(self, text: str) -> None:
        """A warning status line (the raw capture's channel too)."""
        self.admin(f"warning: {text}", PRIORITY_WARNING)

    def on_probe(self, probe: Probe) -> None:
        """Entry point of every listener: ignore list first, then the detector."""
        if probe.src in self.loaded().ignore:
            return
        for alert in self.detector.observe(probe, time.monotonic()):
            self.emit_alert(alert)
        if self.detector.flood.pending:
            self.flood_lines()

    def flood_lines(self) -> None:
        """The flood guard's start/report/end lines (sensor/flood.py), through admin()."""
        for text in self.detector.flood.drain():
            self.admin(text, PRIORITY_WARNING, FLOOD_MESSAGE_ID)

    def flush(self, now: float) -> None:
        """Once a second: due summaries and flood lines, then what the sinks still queue."""
        for alert in self.detector.flush(now):
            self.emit_alert(alert)
        self.flood_lines()
        self.emitter.retry()

    def close(self) -> None:
        """At exit: every window's closing summary (without a name), then what is still queued."""
        for alert in self.detector.flush(float("inf")):
            self.emit_alert(alert, resolve=False)
        self.emitter.retry()

    def emit_alert(self, alert: Alert, resolve: bool = True) -> None:
        """Write one alert (resolving the source's name first if configured and ``resolve``).

        A name is a nicety, the alert is not: too many lookups at once, a failing lookup or
        the shutdown write the alert without one.
        """
        if (resolve and self.loaded().config.resolve_host and not alert.hostname and not alert.net
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
