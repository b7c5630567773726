"""Prometheus metrics without a listening socket: a textfile for node-exporter's textfile collector.

Every ``INTERVAL`` seconds the daemon's tick calls :meth:`Metrics.tick`, which writes
``portsentry_sensor.prom`` into METRICS_DIR atomically (a temporary name that the
collector ignores, then rename).  METRICS_DIR="auto" (the shipped etc/portsentry.conf)
means PACKAGED_DIR when it exists and the sensor may write there (the packaged unit's
StateDirectory=; the package links the file into node-exporter's directory, see
packaging/debian/portsentry-sensor.postinst), else Debian's prometheus-node-exporter
directory on the same condition, else no file; "" (the default when the key is absent)
turns it off; a path is used as given, and a failure to write there is said once in the
journal.
Names follow Prometheus conventions: ``portsentry_sensor_*``, counters end in ``_total``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from typing import Any

from sensor.alert import PRIORITY_WARNING, Alert
from sensor.atomicfile import write_atomic

NODE_EXPORTER_DIR = "/var/lib/prometheus/node-exporter"
PACKAGED_DIR = "/var/lib/portsentry-sensor/metrics"
FILENAME = "portsentry_sensor.prom"
INTERVAL = 5.0

_HELP = {
    "alerts_total": ("counter", "Attack alerts written, by protocol, scan type, mode and verified."),
    "sources_tracked": ("gauge", "(source, protocol) pairs the detector holds a scan window for."),
    "packets_total": ("counter", "Packets the raw-socket capture read."),
    "kernel_drops_total": ("counter", "Packets the kernel dropped on the capture's full receive queues."),
    "watched_ports": ("gauge", "Ports watched, by protocol and mode (bound: tcp/udp; raw: stcp/atcp/sudp/audp)."),
    "flood_suppressed_total": ("counter", "Sources the flood guard kept from alerting (sensor/flood.py)."),
    "flood_episodes_total": ("counter", "Floods of new unverified sources (FLOOD_SOURCES a second) since start."),
    "flood_active": ("gauge", "1 while a flood of new unverified sources lasts, else 0."),
    "reloads_total": ("counter", "Configuration reloads (SIGHUP) since start."),
    "start_time_seconds": ("gauge", "When the sensor started, seconds since the epoch."),
}


def resolve_dir(setting: str) -> str:
    """The directory to write to, or '' for none."""
    if setting == "auto":
        for directory in (PACKAGED_DIR, NODE_EXPORTER_DIR):
            if os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK):
                return directory
        return ""
    return setting


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


class Metrics:
    """Counters the daemon feeds, and the periodic atomic write."""

    def __init__(self, start_time: float | None = None) -> None:
        self.start_time = time.time() if start_time is None else start_time
        self.alerts: Counter[tuple[str, str, str, str]] = Counter()
        self.last_write = 0.0
        self.failed = ""

    def alert(self, alert: Alert) -> None:
        """Count one alert (called for every alert the daemon writes)."""
        self.alerts[(alert.proto, alert.scan, alert.mode, "yes" if alert.verified else "no")] += 1

    def render(self, daemon: Any) -> str:
        """The textfile, from this object's counters and the daemon's state."""
        samples: dict[str, list[str]] = {name: [] for name in _HELP}
        for (proto, scan, mode, verified), count in sorted(self.alerts.items()):
            samples["alerts_total"].append(f"{_labels(proto=proto, scan=scan, mode=mode, verified=verified)} {count}")
        samples["sources_tracked"].append(f" {len(daemon.detector)}")
        stats = getattr(daemon.capture, "stats", {}) if daemon.capture is not None else {}
        samples["packets_total"].append(f" {stats.get('packets', 0)}")
        samples["kernel_drops_total"].append(f" {stats.get('dropped', 0)}")
        for proto in ("tcp", "udp"):
            bound = len(daemon.listeners.watched(proto))
            samples["watched_ports"].append(f"{_labels(proto=proto, mode=proto)} {bound}")
            raw_mode = daemon.plan.raw_mode(proto) if daemon.capture is not None else ""
            if raw_mode:
                samples["watched_ports"].append(f"{_labels(proto=proto, mode=raw_mode)} "
                                                f"{len(daemon.plan.raw_ports(proto))}")
        flood = daemon.detector.flood
        samples["flood_suppressed_total"].append(f" {flood.suppressed_since_start}")
        samples["flood_episodes_total"].append(f" {flood.floods}")
        samples["flood_active"].append(f" {int(flood.active)}")
        samples["reloads_total"].append(f" {daemon.reloads}")
        samples["start_time_seconds"].append(f" {self.start_time:.3f}")
        lines: list[str] = []
        for name, (kind, text) in _HELP.items():
            full = f"portsentry_sensor_{name}"
            lines += [f"# HELP {full} {text}", f"# TYPE {full} {kind}"]
            lines += [f"{full}{sample}" for sample in samples[name]]
        return "\n".join(lines) + "\n"

    def write(self, directory: str, text: str) -> None:
        """Write ``text`` as directory/FILENAME atomically (raises OSError)."""
        write_atomic(os.path.join(directory, FILENAME), text)

    def tick(self, daemon: Any, now: float) -> None:
        """From the daemon's once-a-second loop: write every INTERVAL s; say once when it fails."""
        directory = resolve_dir(daemon.loaded.config.metrics_dir)
        if not directory or now - self.last_write < INTERVAL:
            return
        self.last_write = now
        if daemon.capture is not None:
            with contextlib.suppress(Exception):   # as Daemon.capture_stats: a closed socket
                daemon.capture.kernel_drops()
        try:
            self.write(directory, self.render(daemon))
        except OSError as exc:
            reason = f"{directory}: {exc.strerror or exc}"
            if reason != self.failed:
                daemon.admin(f"warning: metrics not written: {reason}", PRIORITY_WARNING)
            self.failed = reason
            return
        self.failed = ""

