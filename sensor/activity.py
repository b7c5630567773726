"""What the sensor saw and what fail2ban did about it: the data behind ``report`` and ``status``.

Alerts come from the journal through python3-systemd's reader, matched by the
attack alert's MESSAGE_ID (:data:`sensor.alert.MESSAGE_ID`) *and* a trusted
field (``_SYSTEMD_UNIT=portsentry-sensor.service`` by default, or ``_UID=``;
the rule of :func:`sensor.journalmatch.check_journalmatch`), so that a local user
cannot add lines to the report.  Flood episodes are the sensor's status lines
that start with ``adminalert: flood`` (same trusted match; the wording after
that prefix is not relied on).  Bans come from fail2ban's own database
(:mod:`sensor.fail2bandb`).
"""

from __future__ import annotations

import itertools
import multiprocessing
import operator
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from sensor.alert import MESSAGE_ID, SYSLOG_IDENTIFIER
from sensor.journalmatch import check_journalmatch

DEFAULT_MATCH = "_SYSTEMD_UNIT=portsentry-sensor.service"
# Flood lines closer than this belong to one episode.
FLOOD_GAP_US = 300 * 1_000_000

# Groups: src, "tcp dport=22" (one bytes object: one cached hash), scan, verified, count, rest.
_ALERT = re.compile(rb"attackalert: src=(\S+) dst=\S+ proto=((?:tcp|udp) dport=\d+) scan=(\w+) mode=\w+ "
                    rb"verified=(yes|no) count=(\d+) (.*)")
_FLOOD = b"adminalert: flood"
_SUPPRESSED = re.compile(r"(\d+) suppressed")
_CHUNK = 100_000
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ActivityError(ValueError):
    """Bad input (a time, a match, a journal path): one line, exit 2."""


def parse_when(value: str, what: str, now: float) -> float:
    """``24h``/``7d``/``90m`` (that long ago), ``now``, epoch seconds or an ISO 8601 time (UTC if no zone)."""
    text = value.strip()
    if text == "now":
        return now
    relative = re.fullmatch(r"(\d+)([smhdw])", text)
    if relative:
        return now - int(relative.group(1)) * _UNITS[relative.group(2)]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return float(text)
    from datetime import datetime
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ActivityError(f"{what}: '{value[:40]}' is not a time: use 24h, 7d, 90m, now, "
                            f"or 2026-12-01T08:00 (UTC)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass
class Source:
    """Everything one scanning address did in the period."""

    address: str
    alerts: int = 0
    scans: int = 0
    first_us: int = 0
    last_us: int = 0
    verified: bool = False
    max_count: int = 0
    distinct_ports: int = 0
    ports: set[tuple[str, int]] = field(default_factory=set)
    scan_types: Counter[str] = field(default_factory=Counter)

    @property
    def family(self) -> str:
        return "ipv6" if ":" in self.address else "ipv4"

    @property
    def ports_touched(self) -> int:
        """Distinct ports named in its alerts, or more if a summary line counted more in one window."""
        return max(self.distinct_ports, len(self.ports), self.max_count)


@dataclass
class Flood:
    """One flood episode: the flood guard's (sensor/flood.py) ``adminalert: flood: ...`` start line,
    its ``flood continues`` reports and its ``flood ended ...: N ... sources, M suppressed`` line.
    Other wording after ``adminalert: flood`` still counts: lines less than FLOOD_GAP_US apart
    form one episode unless an end line closed it."""

    start_us: int
    end_us: int
    lines: int
    first_message: str
    opened: bool = False                 # began with the guard's start line
    closed: bool = False                 # an end line was seen
    suppressed: int | None = None        # from the end line

    @classmethod
    def from_line(cls, when_us: int, message: bytes) -> Flood:
        text = message.decode("utf-8", "replace")
        episode = cls(when_us, when_us, 1, text[:200], opened=text.startswith("adminalert: flood:"))
        episode.note(text)
        return episode

    def note(self, text: str) -> None:
        if text.startswith("adminalert: flood ended"):
            self.closed = True
            found = _SUPPRESSED.search(text)
            self.suppressed = int(found.group(1)) if found else None


@dataclass
class Activity:
    """All alerts in [since, until): aggregated column-wise (see :meth:`add_rows`), then :meth:`finish`."""

    since: float
    until: float
    match: str
    sources: dict[str, Source] = field(default_factory=dict)
    hourly_scans: Counter[int] = field(default_factory=Counter)
    hourly_alerts: Counter[int] = field(default_factory=Counter)
    ports: Counter[tuple[str, int]] = field(default_factory=Counter)
    port_sources: Counter[tuple[str, int]] = field(default_factory=Counter)
    floods: list[Flood] = field(default_factory=list)
    alert_lines: int = 0
    _alerts: Counter[bytes] = field(default_factory=Counter)
    _scan_types: Counter[tuple[bytes, bytes]] = field(default_factory=Counter)
    _pairs: set[tuple[bytes, bytes]] = field(default_factory=set)
    _ports: Counter[bytes] = field(default_factory=Counter)
    _first: dict[bytes, int] = field(default_factory=dict)
    _last: dict[bytes, int] = field(default_factory=dict)
    _max_count: dict[bytes, int] = field(default_factory=dict)
    _verified: set[bytes] = field(default_factory=set)
    _distinct: Counter[bytes] | None = None       # per source: distinct ports (precount)
    _by_port: Counter[bytes] | None = None        # per port: distinct sources (precount)

    def add_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Fold (when_us, src, b"tcp dport=22", scan, verified, count, rest) rows in, column by column.

        A week can hold a million alerts: Counter/set/dict updates over zipped columns run in C,
        where a per-alert Python method would take several times longer (bench/report_bench.py).
        """
        if not rows:
            return
        whens, srcs, keys, scans, verifieds, counts, rests = zip(*rows, strict=False)
        first = [b" continues: " not in rest for rest in rests]
        hours = [when // 3_600_000_000 for when in whens]
        self.alert_lines += len(rows)
        self._alerts.update(srcs)
        self._ports.update(keys)
        self._pairs.update(zip(srcs, keys, strict=False))
        self._last.update(zip(srcs, whens, strict=False))
        for src, when in dict(zip(reversed(srcs), reversed(whens), strict=False)).items():
            self._first.setdefault(src, when)
        self._scan_types.update(itertools.compress(zip(srcs, scans, strict=False), first))
        self.hourly_alerts.update(hours)
        self.hourly_scans.update(itertools.compress(hours, first))
        self._verified.update(itertools.compress(srcs, [v == b"yes" for v in verifieds]))
        highest = dict(sorted(zip(srcs, map(int, counts), strict=False), key=operator.itemgetter(1)))
        for src, count in highest.items():
            if count > self._max_count.get(src, 0):
                self._max_count[src] = count

    def precount(self) -> None:
        """Count distinct (source, port) pairs per source and per port now, in the span's own process."""
        self._distinct = Counter(map(operator.itemgetter(0), self._pairs))
        self._by_port = Counter(map(operator.itemgetter(1), self._pairs))

    def merge(self, later: Activity) -> None:
        """Add the precounted aggregates of the span that follows this one."""
        assert self._distinct is not None and self._by_port is not None
        assert later._distinct is not None and later._by_port is not None
        both = self._pairs & later._pairs            # counted in each span: once too often
        self._distinct.update(later._distinct)
        self._distinct.subtract(map(operator.itemgetter(0), both))
        self._by_port.update(later._by_port)
        self._by_port.subtract(map(operator.itemgetter(1), both))
        self.alert_lines += later.alert_lines
        for counter in ("_alerts", "_ports", "_scan_types", "hourly_alerts", "hourly_scans"):
            getattr(self, counter).update(getattr(later, counter))
        self._pairs |= later._pairs
        self._verified |= later._verified
        self._last.update(later._last)
        for src, when in later._first.items():
            self._first.setdefault(src, when)
        for src, count in later._max_count.items():
            if count > self._max_count.get(src, 0):
                self._max_count[src] = count
        for flood in later.floods:
            self.add_flood(flood.start_us, flood.first_message.encode(), flood)

    def finish(self) -> None:
        """Build :attr:`sources`, :attr:`ports` and :attr:`port_sources` from the columns.

        Each source's list of ports is filled only on request (:meth:`fill_ports`): the
        counts come from C-level Counters over the (source, port) pairs.
        """
        if self._distinct is None or self._by_port is None:
            self.precount()
        assert self._distinct is not None and self._by_port is not None
        distinct, by_port = self._distinct, self._by_port
        decoded = {key: _port(key) for key in self._ports}
        self.ports = Counter({decoded[key]: count for key, count in self._ports.items()})
        self.port_sources = Counter({decoded[key]: count for key, count in by_port.items()})
        found: dict[bytes, Source] = {}
        for src, alerts in self._alerts.items():
            found[src] = Source(src.decode("ascii", "replace"), alerts=alerts, first_us=self._first[src],
                                last_us=self._last[src], verified=src in self._verified,
                                max_count=self._max_count.get(src, 0), distinct_ports=distinct[src])
        for (src, scan), count in self._scan_types.items():
            found[src].scans += count
            found[src].scan_types[scan.decode()] = count
        self.sources = {source.address: source for source in found.values()}

    def fill_ports(self, addresses: list[str]) -> None:
        """Fill ``ports`` of these sources (one pass over the pairs)."""
        wanted = {address.encode("ascii"): self.sources[address] for address in addresses}
        for src, key in self._pairs:
            source = wanted.get(src)
            if source is not None:
                source.ports.add(_port(key))

    def add_flood(self, when_us: int, message: bytes, episode: Flood | None = None) -> None:
        """One flood line (or a whole episode from a later span): continues the open episode, if any."""
        episode = episode or Flood.from_line(when_us, message)
        last = self.floods[-1] if self.floods else None
        if (last is None or last.closed or episode.opened
                or episode.start_us - last.end_us >= FLOOD_GAP_US):
            self.floods.append(episode)
            return
        last.end_us = episode.end_us
        last.lines += episode.lines
        last.closed, last.suppressed = episode.closed, episode.suppressed


def _port(key: bytes) -> tuple[str, int]:
    """b"tcp dport=22" -> ("tcp", 22)."""
    proto, _, dport = key.partition(b" dport=")
    return proto.decode(), int(dport)


def check_match(match: str) -> str:
    """The trusted journal match, validated like the jail's (``--journalmatch``)."""
    try:
        check_journalmatch(match)
    except ValueError as exc:
        raise ActivityError(str(exc)) from None
    return match


def open_reader(files: list[str] | None, directory: str | None) -> Any:
    """A journal reader on the system journal, journal files, or a journal directory."""
    from systemd import journal
    for path in files or ():
        if not os.path.isfile(path):
            raise ActivityError(f"--file: {path}: no such journal file")
    if directory is not None and not os.path.isdir(directory):
        raise ActivityError(f"--directory: {directory}: no such directory")
    try:
        if files:
            return journal.Reader(files=files)
        if directory is not None:
            return journal.Reader(path=directory)
        return journal.Reader()
    except OSError as exc:
        raise ActivityError(f"cannot open the journal: {exc.strerror or exc}") from None


def read_activity(reader: Any, match: str, since: float, until: float,
                  address: str | None = None) -> Activity:
    """Read alerts (and flood lines) in [since, until) from ``reader``; only ``address``'s if given."""
    activity = _read(reader, match, since, until, address)
    activity.finish()
    return activity


def read_activity_split(files: list[str] | None, directory: str | None, match: str, since: float,
                        until: float, workers: int = 2) -> Activity:
    """Like read_activity on a reader of its own, the period cut into ``workers`` equal spans of time
    read in parallel (forked processes; this one reads the first span), then merged."""
    edges = [since + (until - since) * index / workers for index in range(workers + 1)]
    spans = list(itertools.pairwise(edges))
    context = multiprocessing.get_context("fork")
    with context.Pool(workers - 1) as pool:
        later = [pool.apply_async(_read_span, (files, directory, match, lo, hi)) for lo, hi in spans[1:]]
        activity = _read_span(files, directory, match, *spans[0])
        for part in later:
            activity.merge(part.get(timeout=3600))
    activity.until = until
    activity.finish()
    return activity


def _read_span(files: list[str] | None, directory: str | None, match: str, since: float,
               until: float) -> Activity:
    reader = open_reader(files, directory)
    try:
        activity = _read(reader, match, since, until, None)
    finally:
        reader.close()
    activity.precount()
    return activity


def _read(reader: Any, match: str, since: float, until: float, address: str | None) -> Activity:
    activity = Activity(since=since, until=until, match=match)
    alert_terms = [f"MESSAGE_ID={MESSAGE_ID}", match]
    if address is not None:
        alert_terms.append(f"PORTSENTRY_SRC={address}")
    reader.add_match(*alert_terms)
    if address is None:
        reader.add_disjunction()
        reader.add_match(f"SYSLOG_IDENTIFIER={SYSLOG_IDENTIFIER}", match)
    if since > 0:
        reader.seek_realtime(float(since))
    _scan(reader, activity, int(until * 1_000_000))
    return activity


def _scan(reader: Any, activity: Activity, until_us: int) -> None:
    # The hot loop: the reader's raw accessors, one field per entry and a bytes regex, no
    # per-entry dict of every field as Reader.get_next builds; rows are folded in chunks.
    step, realtime, get = reader._next, reader._get_realtime, reader._get
    since_us = int(activity.since * 1_000_000)
    match_alert = _ALERT.match
    rows: list[tuple[Any, ...]] = []
    append = rows.append
    while step():
        when = realtime()
        if when >= until_us:
            break
        if when < since_us:
            continue
        try:
            message = get("MESSAGE")
        except KeyError:
            continue
        found = match_alert(message)
        if found is not None:
            append((when, *found.groups()))
            if len(rows) >= _CHUNK:
                activity.add_rows(rows)
                rows = []
                append = rows.append
        elif message.startswith(_FLOOD):
            activity.add_flood(when, message)
    activity.add_rows(rows)


def now() -> float:
    """The clock (a function so that tests can replace it)."""
    return time.time()
