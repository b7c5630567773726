"""The flood guard: forged one-packet sources must not turn into one alert each.

A decoy flood (``hping3 --rand-source``, ``nmap -D RND:50``) sends one probe
from each of thousands of forged addresses.  Without a guard every one of them
is an alert, fail2ban bans them all and the real scanner's ban waits behind
them.  The guard counts *new unverified sources* per second (a sliding one-
second bucket).  When more than ``budget`` (FLOOD_SOURCES) arrive within one
second a flood starts:

- a new unverified source alerts only once it has shown scan behaviour: more
  than FLOOD_PORTS distinct ports (and more than SCAN_TRIGGER) in its window;
- during the flood, these scan-behaviour alerts are capped at ``budget`` per
  second (a source over the cap stays unalerted and alerts at its next new
  port, so a real scanner is deferred, never dropped).  With at most
  ``budget`` single-probe alerts in the second the flood starts, first alerts
  of unverified sources never exceed 2 x ``budget`` per second, which bounds
  the sensor's output under any flood by construction;
- ``verified=yes`` probes (completed TCP connections) are never suppressed;
- every new source seen during the flood is counted, and every one that
  would have alerted without the guard is counted as suppressed; one
  ``adminalert:`` line says the flood started, one per ``interval`` while it
  lasts (sources seen, suppressed, top ports, top /16 or /48 prefixes) and one
  when it ends (no second over the budget for ``QUIET`` seconds).

Pure: the clock is a parameter, nothing here does I/O; the lines it wants
written wait in :attr:`FloodGuard.pending` for the daemon's admin() path.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

QUIET = 5.0          # seconds without an over-budget second before the flood ends
TOP = 3              # ports/prefixes named in a report line
MAX_KEYS = 1024      # distinct ports/prefixes counted per report (the rest is "other")


def prefix(src: str) -> str:
    """The /16 (IPv4) or /48 (IPv6) network of an address, as text."""
    if ":" not in src:
        a, b, _ = src.split(".", 2)
        return f"{a}.{b}.0.0/16"
    packed = ipaddress.IPv6Address(src).packed[:6] + bytes(10)
    return f"{ipaddress.IPv6Address(packed)}/48"


class _Tally:
    """Bounded counts for one report: at most MAX_KEYS keys, the rest is 'other'."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.other = 0

    def add(self, key: str) -> None:
        if key in self.counts or len(self.counts) < MAX_KEYS:
            self.counts[key] += 1
        else:
            self.other += 1

    def top(self) -> str:
        items = [f"{k} ({n})" for k, n in self.counts.most_common(TOP)]
        return ", ".join(items) if items else "none"


class FloodGuard:
    """Per-second new-source budget, the flood state and its report lines."""

    def __init__(self, budget: int = 0, ports: int = 5, interval: float = 30.0) -> None:
        self.budget, self.ports, self.interval = budget, ports, interval
        self.second = -1
        self.new_this_second = 0
        self.alerts_this_second = 0
        self.active = False
        self.started = 0.0
        self.last_over = 0.0
        self.last_report = 0.0
        self.pending: list[str] = []
        self.floods = 0                 # flood episodes since start
        self.suppressed_since_start = 0  # the totals below restart with each flood; this does not
        self._reset_interval()
        self._reset_totals()

    def configure(self, budget: int, ports: int, interval: float) -> None:
        """New settings (a reload); a running flood stays running."""
        self.budget, self.ports, self.interval = budget, ports, interval
        if budget <= 0 and self.active:
            self._end(self.last_over)

    def _reset_interval(self) -> None:
        self.seen = self.suppressed = self.alerted = self.deferred = 0
        self.port_tally, self.prefix_tally = _Tally(), _Tally()

    def _reset_totals(self) -> None:
        self.total_seen = self.total_suppressed = self.total_alerted = 0

    def _roll(self, now: float) -> None:
        second = int(now)
        if second != self.second:
            self.second, self.new_this_second, self.alerts_this_second = second, 0, 0

    def new_source(self, src: str, port: int, now: float) -> None:
        """A new unverified source: count it against the budget; maybe start a flood."""
        if self.budget <= 0:
            return
        self._roll(now)
        self.new_this_second += 1
        if self.new_this_second > self.budget:
            self.last_over = now
            if not self.active:
                self._start(now)
        if self.active:
            self.seen += 1
            self.total_seen += 1
            self.port_tally.add(str(port))
            self.prefix_tally.add(prefix(src))

    def threshold(self, scan_trigger: int) -> int:
        """Distinct ports an unverified source must exceed before it alerts."""
        return max(scan_trigger, self.ports) if self.active else scan_trigger

    def may_alert(self, now: float) -> bool:
        """Take one first-alert token for an unverified source (always granted outside a flood)."""
        if self.budget <= 0:
            return True
        if not self.active:
            return True             # below the budget, or new_source() would have started a flood
        self._roll(now)
        if self.alerts_this_second >= self.budget:
            self.deferred += 1
            return False
        self.alerts_this_second += 1
        self.alerted += 1
        self.total_alerted += 1
        return True

    def suppress(self) -> None:
        """Count a source that would have alerted without the guard."""
        self.suppressed += 1
        self.total_suppressed += 1
        self.suppressed_since_start += 1

    def _start(self, now: float) -> None:
        self.active = True
        self.floods += 1
        self.started = self.last_report = now
        self._reset_interval()
        self._reset_totals()
        self.pending.append(
            f"flood: more than {self.budget} new unverified sources in one second; until it ends "
            f"single-probe sources are counted, not alerted: a source must touch more than "
            f"{self.ports} ports (and SCAN_TRIGGER) to alert, at most {self.budget} such alerts per "
            f"second; verified=yes probes are unaffected")

    def _report(self, now: float, head: str) -> str:
        other = self.port_tally.other + self.prefix_tally.other
        return (f"{head}: {self.seen} new unverified sources in {max(1, round(now - self.last_report))} s, "
                f"{self.suppressed} suppressed, {self.alerted} alerted for scan behaviour, "
                f"{self.deferred} deferred; top ports {self.port_tally.top()}; "
                f"top prefixes {self.prefix_tally.top()}" + (f"; {other} not itemised" if other else ""))

    def _end(self, now: float) -> None:
        if not math.isfinite(now):  # the shutdown's flush(inf): the flood lasted until its last burst
            now = self.last_over
        tops = ""
        if self.port_tally.counts:
            tops = (f"; since the last report: top ports {self.port_tally.top()}, "
                    f"top prefixes {self.prefix_tally.top()}")
        self.pending.append(
            f"flood ended after {max(1, round(now - self.started))} s: {self.total_seen} new unverified "
            f"sources, {self.total_suppressed} suppressed, {self.total_alerted} alerted for scan "
            f"behaviour{tops}; single-probe sources alert again")
        self.active = False
        self._reset_interval()

    def tick(self, now: float) -> None:
        """Once a second: the interval report, or the end of the flood."""
        if not self.active:
            return
        if now - self.last_over >= QUIET:
            self._end(now)
        elif now - self.last_report >= self.interval:
            self.pending.append(self._report(now, "flood continues"))
            self.last_report = now
            self._reset_interval()

    def drain(self) -> list[str]:
        """The admin lines to write now."""
        lines, self.pending = self.pending, []
        return lines
