"""Per-source scan state: the trigger, the window, the summaries, the bound.

PortSentry 1.2 kept one global ring of the last 50 hosts.  Here each source
has a :class:`ScanWindow` per protocol: the distinct ports it touched since its
first probe.  When it has touched more than SCAN_TRIGGER ports the first alert
goes out at once; later probes inside the window are summarised (at most
``summary_max_lines`` lines per window, no more often than every
``summary_interval`` seconds, plus one closing line when the window ends).  A
source that comes back after its window starts a new one and is reported again.
The table of windows is an LRU with a hard size, so spoofed floods cannot grow
memory without limit.  Pure: the clock is a parameter, nothing here does I/O.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from sensor.alert import Alert

_SMALL_SET = 64  # above this many ports a window switches to a bitmap


@dataclass(frozen=True)
class Probe:
    """One packet or connection that touched a watched port."""

    src: str
    dst: str
    proto: str
    dport: int
    scan: str
    mode: str
    verified: bool
    flags: str = ""


@dataclass(frozen=True)
class DetectorSettings:
    """The knobs of the detector (from Config)."""

    scan_trigger: int = 0
    scan_window: float = 300.0
    summary_interval: float = 30.0
    summary_max_lines: int = 2
    max_sources: int = 4096


@dataclass
class ScanWindow:
    """Ports one source touched on one protocol since ``started``."""

    started: float
    first: Probe
    small: set[int] = field(default_factory=set)
    bitmap: bytearray | None = None
    count: int = 0
    alerted: bool = False
    reported: int = 0       # ports covered by the last line written
    summaries: int = 0
    last_line: float = 0.0
    last: Probe | None = None

    def touch(self, port: int) -> bool:
        """Record a port; True if it is new in this window."""
        if self.bitmap is None:
            if port in self.small:
                return False
            self.small.add(port)
            if len(self.small) > _SMALL_SET:
                self.bitmap = bytearray(8192)
                for p in self.small:
                    self.bitmap[p >> 3] |= 1 << (p & 7)
                self.small = set()
        else:
            byte, bit = port >> 3, 1 << (port & 7)
            if self.bitmap[byte] & bit:
                return False
            self.bitmap[byte] |= bit
        self.count += 1
        return True


class Detector:
    """Turns probes into alerts; call :meth:`flush` periodically for summaries."""

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.windows: OrderedDict[tuple[str, str], ScanWindow] = OrderedDict()
        self.evicted = 0

    def observe(self, probe: Probe, now: float) -> list[Alert]:
        """Account one probe; return the alerts it causes (zero or one)."""
        key = (probe.src, probe.proto)
        alerts: list[Alert] = []
        window = self.windows.get(key)
        if window is not None and now - window.started >= self.settings.scan_window:
            alerts += self._close(key, window, now)
            window = None
        if window is None:
            window = ScanWindow(started=now, first=probe)
            self._insert(key, window)
        else:
            self.windows.move_to_end(key)
        if not window.touch(probe.dport):
            return alerts
        window.last = probe
        if not window.alerted and window.count > self.settings.scan_trigger:
            window.alerted = True
            window.reported = window.count
            window.last_line = now
            alerts.append(self._alert(probe, window.count))
        return alerts

    def _insert(self, key: tuple[str, str], window: ScanWindow) -> None:
        self.windows[key] = window
        while len(self.windows) > self.settings.max_sources:
            self.windows.popitem(last=False)
            self.evicted += 1

    def _alert(self, probe: Probe, count: int, summary: bool = False, window: int = 0) -> Alert:
        return Alert(src=probe.src, dst=probe.dst, proto=probe.proto, dport=probe.dport,
                     scan=probe.scan, mode=probe.mode, verified=probe.verified,
                     count=count, summary=summary, window=window, flags=probe.flags)

    def _summary(self, window: ScanWindow, now: float, closing: bool = False) -> list[Alert]:
        if not window.alerted or window.count <= window.reported or window.last is None:
            return []
        # The last allowed line is kept for the window's end, so it carries the final count.
        allowed = self.settings.summary_max_lines - (0 if closing else 1)
        if window.summaries >= allowed:
            return []
        window.summaries += 1
        window.reported = window.count
        window.last_line = now
        seconds = max(1, round(now - window.started))
        return [self._alert(window.last, window.count, summary=True, window=seconds)]

    def _close(self, key: tuple[str, str], window: ScanWindow, now: float) -> list[Alert]:
        del self.windows[key]
        return self._summary(window, min(now, window.started + self.settings.scan_window), closing=True)

    def flush(self, now: float) -> list[Alert]:
        """Emit due summaries and close expired windows."""
        alerts: list[Alert] = []
        for key, window in list(self.windows.items()):
            if now - window.started >= self.settings.scan_window:
                alerts += self._close(key, window, now)
            elif window.alerted and now - window.last_line >= self.settings.summary_interval:
                alerts += self._summary(window, now)
        return alerts

    def __len__(self) -> int:
        return len(self.windows)
