"""Per-source scan state: the trigger, the window, the summaries, the bound.

PortSentry 1.2 kept one global ring of the last 50 hosts.  Here each source
has a :class:`ScanWindow` per protocol: the distinct ports it touched since its
first probe.  When it has touched more than SCAN_TRIGGER ports the first alert
goes out at once; later probes inside the window are summarised (at most
``summary_max_lines`` lines per window, no more often than every
``summary_interval`` seconds, plus one closing line when the window ends).  A
source that comes back after its window starts a new one and is reported again.
The state has two bounded tiers (see :class:`Detector`), so spoofed floods
cannot grow memory without limit nor push out sources that really scan, and a
flood guard (:mod:`sensor.flood`) keeps forged one-packet sources from
becoming one alert each.  Pure: the clock is a parameter, nothing here does I/O.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from sensor.alert import Alert
from sensor.flood import FloodGuard
from sensor.portset import PortSet
from sensor.prefixwatch import PrefixWatch
from sensor.probe import Probe
from sensor.settings import DetectorSettings


@dataclass
class ScanWindow:
    """Ports one source touched on one protocol since ``started``."""

    started: float
    first: Probe
    ports: PortSet = field(default_factory=PortSet)
    alerted: bool = False
    suppressed: bool = False  # counted once by the flood guard
    reported: int = 0       # ports covered by the last line written
    summaries: int = 0
    last_line: float = 0.0
    last: Probe | None = None

    @property
    def count(self) -> int:
        """Distinct ports so far."""
        return self.ports.count

    def touch(self, port: int) -> bool:
        """Record a port; True if it is new in this window."""
        return self.ports.add(port)


class Detector:
    """Turns probes into alerts; call :meth:`flush` periodically for summaries.

    Two tiers of state, each bounded on its own:

    - *confirmed*: :attr:`windows`, an LRU of full :class:`ScanWindow` objects
      for sources that alerted, touched two or more distinct ports, or sent a
      verified probe; at most ``max_sources`` (STATE_MAX_SOURCES) entries, about
      1 KB each (9 KB once a window holds more than 64 ports and switches to its
      8 KiB bitmap): at most about 36 MB at the default 4096.  Only confirmed
      entries evict confirmed entries.
    - *probation*: unverified sources that sent probes to one port only and did
      not alert (under a flood: every forged source).  A fixed, direct-mapped
      table of ``probation_slots`` slots (hash of source and protocol, port,
      first-seen time: 14 bytes a slot, 14.7 MB at the default 2**20, allocated
      on first use).  A new single-probe source can only overwrite another
      probation slot, never a confirmed window.  At 10,000 forged sources a
      second a slot survives 20 s with probability e**(-200000/2**20), about
      83 %, so a slow scanner's first probe is usually still there when its
      second port arrives; with its second distinct port it is confirmed.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        self.windows: OrderedDict[tuple[str, str], ScanWindow] = OrderedDict()
        self.evicted = 0
        self.flood = FloodGuard()
        self.prefixes = PrefixWatch()   # sensor/prefixwatch.py: rotating addresses of one prefix
        self._settings = settings
        self.settings = settings
        self.probation_count = 0
        self.probation_evicted = 0
        self._keys: array[int] | None = None
        self._ports = array("H")
        self._times = array("f")
        self._epoch = 0.0
        self._mask = 0

    @property
    def settings(self) -> DetectorSettings:
        """The knobs; setting them (a reload) reconfigures the flood guard too."""
        return self._settings

    @settings.setter
    def settings(self, settings: DetectorSettings) -> None:
        self._settings = settings
        self.flood.configure(settings.flood_sources, settings.flood_ports, settings.summary_interval)
        self.prefixes.settings = settings

    def observe(self, probe: Probe, now: float) -> list[Alert]:
        """Account one probe; return the alerts it causes (zero or one, plus closing summaries)."""
        key = (probe.src, probe.proto)
        absorbed, alerts, forget = self.prefixes.observe(probe, now, self.flood, self._alert)
        for src in forget:  # the prefix alert speaks for these addresses now
            self.windows.pop((src, probe.proto), None)
        if absorbed:
            return alerts
        window = self.windows.get(key)
        if window is not None and now - window.started >= self.settings.scan_window:
            alerts += self._close(key, window, now)
            window = None
        if window is not None:
            self.windows.move_to_end(key)
        elif probe.verified:
            window = ScanWindow(started=now, first=probe)
            self._insert(key, window)
        else:
            window = self._probation(key, probe, now)
            if window is None:
                return alerts
        if not window.touch(probe.dport):
            return alerts
        window.last = probe
        self._check(window, probe, now, alerts)
        return alerts

    def _check(self, window: ScanWindow, probe: Probe, now: float, alerts: list[Alert]) -> None:
        """The first alert of a window, if it is due and the flood guard allows it."""
        if window.alerted:
            return
        trigger = self.settings.scan_trigger
        if probe.verified or window.count > self.flood.threshold(trigger):
            if not probe.verified and not self.flood.may_alert(now):
                return
            window.alerted = True
            window.reported = window.count
            window.last_line = now
            alerts.append(self._alert(probe, window.count))
        elif window.count > trigger and not window.suppressed:
            window.suppressed = True
            self.flood.suppress()

    def _probation(self, key: tuple[str, str], probe: Probe, now: float) -> ScanWindow | None:
        """An unverified source without a confirmed window: its confirmed window, or None."""
        if self._keys is None:
            slots = 1 << max(4, self.settings.probation_slots - 1).bit_length()
            self._keys = array("q", bytes(8 * slots))
            self._ports = array("H", bytes(2 * slots))
            self._times = array("f", bytes(4 * slots))
            self._mask, self._epoch = slots - 1, now
        keys = self._keys
        tag = hash(key) or 1
        slot = tag & self._mask
        if keys[slot] == tag and now - (self._epoch + self._times[slot]) < self.settings.scan_window:
            first = self._ports[slot]
            if first == probe.dport:
                return None
            keys[slot] = 0                 # a second distinct port: confirmed
            self.probation_count -= 1
            window = ScanWindow(started=self._epoch + self._times[slot], first=probe)
            # With SCAN_TRIGGER 0 a probation source was one the guard suppressed: counted already.
            window.suppressed = self.settings.scan_trigger < 1
            window.touch(first)
            self._insert(key, window)
            return window
        self.flood.new_source(probe.src, probe.dport, now)
        if self.flood.threshold(self.settings.scan_trigger) < 1 and self.flood.may_alert(now):
            window = ScanWindow(started=now, first=probe)
            self._insert(key, window)
            return window
        if self.settings.scan_trigger < 1:
            self.flood.suppress()
        if keys[slot] == 0:
            self.probation_count += 1
        elif keys[slot] != tag:
            self.probation_evicted += 1
        keys[slot] = tag
        self._ports[slot] = probe.dport
        self._times[slot] = now - self._epoch
        return None

    def _insert(self, key: tuple[str, str], window: ScanWindow) -> None:
        self.windows[key] = window
        while len(self.windows) > self.settings.max_sources:
            self.windows.popitem(last=False)
            self.evicted += 1

    def _alert(self, probe: Probe, count: int, summary: bool = False, window: int = 0) -> Alert:
        return Alert.from_probe(probe, count, summary=summary, window=window)

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
        """Emit due summaries and close expired windows; advance the flood guard's clock."""
        alerts: list[Alert] = []
        for key, window in list(self.windows.items()):
            if now - window.started >= self.settings.scan_window:
                alerts += self._close(key, window, now)
            elif window.alerted and now - window.last_line >= self.settings.summary_interval:
                alerts += self._summary(window, now)
        alerts += self.prefixes.flush(now)
        self.flood.tick(now)
        return alerts

    def __len__(self) -> int:
        return len(self.windows) + self.probation_count
