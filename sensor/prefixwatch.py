"""Rotating sources: one actor per IPv6 /64 (IPV6_PREFIX), optionally per IPv4 /24 (IPV4_PREFIX).

An IPv6 end site gets at least a /64, so a scanner can send every probe from a
fresh address.  Keyed per address, that is many one-port "scans", each banned
alone, and the next address walks in.  This module keeps a bounded window per
(prefix, protocol, verified) next to the detector's per-address windows:

- the first address of a prefix is an ordinary source: its alert, if any, is
  written by the detector exactly as before (byte for byte);
- once a *second* distinct address of the same prefix shows up within
  SCAN_WINDOW, the prefix is one actor as soon as its addresses together touched
  more than SCAN_TRIGGER distinct ports, or PREFIX_ADDRESSES distinct addresses
  probed (whatever the ports).  Then ONE prefix alert is written
  (``src=2001:db8:77::/64``), and from then on every probe of that prefix (same
  protocol, same verified class) is only counted here: no per-address alert, no
  per-address summary, no new-source count in the flood guard.  One closing
  summary at the window's end carries the final counts.  A rotation of 50 or
  10,000 addresses is therefore at most 3 lines: the first address's alert, the
  prefix alert, the prefix's closing summary.  Nothing is held back: with the
  second address the prefix alert replaces what would have been that address's
  alert, so there is no delay to release and no hold timer to tune;
- probes with ``verified=yes`` (completed handshakes) and without are counted in
  separate windows: forged unverified probes from a scanner's /64 can neither
  make its prefix alert ``verified=no`` (which ``mode = verified`` would not ban)
  nor absorb its verified probes;
- a prefix that overlaps the sensor's ignore list (including this host's own
  addresses) is never alerted as a prefix: its addresses alert one by one, as
  before.  An ignored address inside a scanning /64 therefore stays reachable.

The flood guard (:mod:`sensor.flood`): during a flood an unverified prefix needs
what an unverified source needs, more than max(SCAN_TRIGGER, FLOOD_PORTS)
distinct ports, and one of the guard's per-second alert tokens.  So a forged
flood that sends two packets from each of many /64s gets no prefix banned, and
a forged prefix costs the attacker as many ports as a forged address does.
Outside a flood, forging two packets from two addresses of a /64 bans the /64
(``mode = all``); ``mode = verified`` never bans it for forged packets.

Memory: three tiers of at most ``max_prefixes`` (STATE_MAX_SOURCES) entries
each: prefixes seen from one address (address, time, port: about 250 bytes;
under a forged flood every prefix is one of these, and only these are evicted by
fresh prefixes), prefix windows that have not alerted, and alerted ones (so a
flood cannot push out a prefix being absorbed).  A window is a
:class:`sensor.detector.ScanWindow`-like port set (about 1 KB, 9 KB past 64
ports) plus at most ADDRESS_CAP remembered addresses (about 100 bytes each):
about 7.5 KB a window, at most 60 MB at the default 4096 (plus 8 KiB per window that
touched more than 64 ports).  Past ADDRESS_CAP addresses a window counts probes
from addresses it does not remember as new ones (the count is exact for a
rotation, an upper bound otherwise).

Pure: the clock is a parameter, nothing here does I/O.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from sensor.alert import Alert
from sensor.portset import PortSet
from sensor.probe import Probe
from sensor.settings import DetectorSettings

ADDRESS_CAP = 64          # addresses a prefix window remembers by name
IPV6_LENGTHS = (32, 64)   # IPV6_PREFIX: 32..64, or 128 (off)
IPV4_LENGTHS = (16, 32)   # IPV4_PREFIX: 16..32 (32: off)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Networks(Protocol):
    networks: tuple[Network, ...]


@dataclass
class PrefixWindow:
    """What one prefix (protocol, verified class) did since ``started``."""

    net: str
    started: float
    ports: PortSet = field(default_factory=PortSet)
    addrs: set[str] = field(default_factory=set)
    address_count: int = 0
    alerted: bool = False
    reported: tuple[int, int] = (0, 0)
    last: Probe | None = None

    def add(self, probe: Probe) -> None:
        """Count the probe's address and port."""
        self.count(probe.src, probe.dport)
        self.last = probe

    def count(self, src: str, port: int) -> None:
        """Count an address and a port."""
        if src not in self.addrs:
            self.address_count += 1
            if len(self.addrs) < ADDRESS_CAP:
                self.addrs.add(src)
        self.ports.add(port)

    @property
    def port_count(self) -> int:
        """Distinct ports of the prefix so far."""
        return self.ports.count


class IgnoreRanges:
    """The ignore list as merged integer ranges per family: does a prefix overlap it?"""

    def __init__(self, networks: Iterable[Network]) -> None:
        spans: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        for net in networks:
            low = int(net.network_address)
            spans[net.version].append((low, low + net.num_addresses - 1))
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, items in spans.items():
            merged: list[tuple[int, int]] = []
            for low, high in sorted(items):
                if merged and low <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], high))
                else:
                    merged.append((low, high))
            self._starts[version] = [low for low, _ in merged]
            self._ends[version] = [high for _, high in merged]

    def overlaps(self, net: Network) -> bool:
        """True if any ignored address lies in ``net`` (or ``net`` lies in an ignored network)."""
        low = int(net.network_address)
        high = low + net.num_addresses - 1
        starts, ends = self._starts[net.version], self._ends[net.version]
        i = bisect.bisect_right(starts, high) - 1   # the last range starting at or below high
        return i >= 0 and ends[i] >= low


Key = tuple[int, bool, str, bool]   # (prefix bits, IPv6, protocol, verified)


class FloodPolicy(Protocol):
    """What the watch asks the flood guard (sensor.flood.FloodGuard)."""

    def threshold(self, scan_trigger: int) -> int: ...
    def may_alert(self, now: float) -> bool: ...


class PrefixWatch:
    """The per-prefix windows; :meth:`observe` runs before the detector's per-address path."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        # A prefix seen from one address only is just (address, first seen, port) in
        # ``first`` (cheap: that is every prefix of a forged flood); its second address
        # makes it a window.  Each tier holds at most max_prefixes, oldest out first; a
        # flood of fresh prefixes only evicts ``first`` entries, never a window, and
        # windows never evict alerted prefixes that are being absorbed.
        self.first: OrderedDict[Key, tuple[str, float, int]] = OrderedDict()
        self.windows: OrderedDict[Key, PrefixWindow] = OrderedDict()
        self.alerted: OrderedDict[Key, PrefixWindow] = OrderedDict()
        self.evicted = 0
        self.vetoed = 0          # prefixes not alerted because they overlap the ignore list
        # The current ignore list (an object with ``networks``); the daemon sets a getter.
        self.ignore: Callable[[], _Networks | None] = lambda: None
        self._ranges: tuple[object, IgnoreRanges] | None = None

    def _ignored(self, net: Network) -> bool:
        current = self.ignore()
        if current is None:
            return False
        if self._ranges is None or self._ranges[0] is not current:
            self._ranges = (current, IgnoreRanges(current.networks))
        return self._ranges[1].overlaps(net)

    def observe(self, probe: Probe, now: float, flood: FloodPolicy,
                alert: Callable[[Probe, int], Alert]) -> tuple[bool, list[Alert], set[str]]:
        """Account a probe: (absorbed, alerts, addresses to forget).

        ``absorbed``: the prefix speaks for this probe; the detector must not
        account it per address.  ``addresses to forget``: the per-address windows
        the new prefix alert replaces (dropped without their summaries).
        """
        six = ":" in probe.src
        length = self.settings.prefix_length(six)
        if length is None:
            return False, [], set()
        bits = int(ipaddress.ip_address(probe.src)) >> ((128 if six else 32) - length)
        key: Key = (bits, six, probe.proto, probe.verified)
        alerts: list[Alert] = []
        window = self.alerted.get(key) or self.windows.get(key)
        if window is not None and now - window.started >= self.settings.scan_window:
            alerts += self._close(key, window, now)
            window = None
        if window is None:
            seen = self.first.get(key)
            if seen is not None and now - seen[1] >= self.settings.scan_window:
                del self.first[key]
                seen = None
            if seen is None:
                self._insert(self.first, key, (probe.src, now, probe.dport))
                return False, alerts, set()
            if seen[0] == probe.src:
                return False, alerts, set()
            del self.first[key]           # a second address: the prefix gets a window
            window = PrefixWindow(net=str(self._network(key, length)), started=seen[1])
            window.count(seen[0], seen[2])
            self._insert(self.windows, key, window)
        elif not window.alerted:
            self.windows.move_to_end(key)
        window.add(probe)
        if window.alerted:
            return True, alerts, set()
        if not self._due(window, probe, now, flood, self._network(key, length)):
            return False, alerts, set()
        window.alerted = True
        del self.windows[key]
        self._insert(self.alerted, key, window)
        window.reported = (window.port_count, window.address_count)
        alerts.append(self._render(alert(probe, window.port_count), window))
        return True, alerts, set(window.addrs)

    @staticmethod
    def _network(key: Key, length: int) -> Network:
        bits, six = key[0], key[1]
        if six:
            return ipaddress.IPv6Network((bits << (128 - length), length))
        return ipaddress.IPv4Network((bits << (32 - length), length))

    def _insert(self, table: OrderedDict[Key, Any], key: Key, value: object) -> None:
        table[key] = value
        while len(table) > self.settings.max_sources:
            table.popitem(last=False)
            self.evicted += 1

    def _due(self, window: PrefixWindow, probe: Probe, now: float, flood: FloodPolicy, net: Network) -> bool:
        if window.address_count < 2:
            return False
        trigger = self.settings.scan_trigger
        if probe.verified:
            due = window.port_count > trigger or window.address_count >= self.settings.prefix_addresses
        else:
            # During a flood: scan behaviour (ports) only; a forger can cheaply add addresses.
            threshold = flood.threshold(trigger)
            due = window.port_count > threshold or (threshold == trigger
                                                    and window.address_count >= self.settings.prefix_addresses)
        if not due:
            return False
        if self._ignored(net):
            self.vetoed += 1
            return False
        return probe.verified or flood.may_alert(now)

    @staticmethod
    def _render(base: Alert, window: PrefixWindow, summary: bool = False, seconds: int = 0) -> Alert:
        return replace(base, count=window.port_count, summary=summary, window=seconds, net=window.net,
                       addresses=window.address_count)

    def _close(self, key: Key, window: PrefixWindow, now: float) -> list[Alert]:
        (self.alerted if window.alerted else self.windows).pop(key, None)
        last = window.last
        if (not window.alerted or last is None or self.settings.summary_max_lines < 1
                or (window.port_count, window.address_count) == window.reported):
            return []
        end = min(now, window.started + self.settings.scan_window)
        base = Alert.from_probe(last, window.port_count)
        return [self._render(base, window, summary=True, seconds=max(1, round(end - window.started)))]

    def flush(self, now: float) -> list[Alert]:
        """Close expired windows: the alerted ones write their one closing summary."""
        alerts: list[Alert] = []
        while self.first:   # oldest first: entries are never moved
            key, (_, started, _) = next(iter(self.first.items()))
            if now - started < self.settings.scan_window:
                break
            del self.first[key]
        for table in (self.alerted, self.windows):
            for key, window in list(table.items()):
                if now - window.started >= self.settings.scan_window:
                    alerts += self._close(key, window, now)
        return alerts

    def __len__(self) -> int:
        return len(self.first) + len(self.windows) + len(self.alerted)
