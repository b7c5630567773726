"""What PortSentry 1.2 (Debian's ``portsentry``) leaves on a host, read as data.

PortSentry's bans never expire: KILL_ROUTE adds a reject route, KILL_HOSTS_DENY
appends to /etc/hosts.deny, KILL_RUN_CMD (in the how-tos) inserts iptables DROP
rules, and every block is recorded in ``HISTORY_FILE`` and
``BLOCKED_FILE.<mode>`` as written by ``WriteBlocked()`` in portsentry_io.c::

    1063040458 - 09/08/2003 10:00:58 Host: 1.2.3.4/1.2.3.4 Port: 80 TCP Blocked

This module only parses: the record files, hosts.deny and ``ip -j route``
output (firewall rules: :mod:`sensor.migration.leftover_rules`).  A leftover
is only recognised when it names an address PortSentry recorded and has the
exact shape PortSentry's templates produce; anything else is not ours to
touch.  :mod:`sensor.migration.banplan` does the I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sensor.addr import canonical_or_none

RECORD_MODES = ("tcp", "udp", "stcp", "sudp", "atcp", "audp")
REJECT_ROUTE_TYPES = ("unreachable", "prohibit", "blackhole")
DEFAULT_HOSTS_DENY = ("ALL: $TARGET$ : DENY", "ALL: $TARGET$")
MAX_LINE = 1024  # PortSentry's MAXBUF
LAST_TIME = 253402300799  # 9999-12-31 23:59:59 UTC: later record times are not dates

_RECORD = re.compile(
    r"^(?P<when>\d+) - \d\d/\d\d/\d{4} \d\d:\d\d:\d\d "
    r"Host: (?P<name>\S*)/(?P<addr>[0-9A-Fa-f.:]+) Port: (?P<port>\d+) (?P<proto>TCP|UDP) Blocked\s*$")


def canonical(text: str) -> str | None:
    """An address in canonical form (``/32``/``/128`` allowed), or None (:mod:`sensor.addr`)."""
    return canonical_or_none(text, host_prefix=True)


@dataclass(frozen=True)
class BlockRecord:
    """One ``... Host: name/addr Port: N TCP Blocked`` line."""

    address: str
    when: int
    port: int
    proto: str
    where: str


def parse_records(text: str, path: str) -> tuple[list[BlockRecord], list[str]]:
    """Parse a history or blocked file; unreadable lines come back as warnings."""
    records: list[BlockRecord] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _RECORD.match(line)
        address = canonical(match.group("addr")) if match else None
        if match is None or address is None:
            warnings.append(f"{path}:{number}: not a PortSentry block record: {line.strip()[:60]!r}")
            continue
        if len(match.group("when")) > 12 or int(match.group("when")) > LAST_TIME:
            warnings.append(f"{path}:{number}: timestamp out of range: {match.group('when')[:30]!r}")
            continue
        records.append(BlockRecord(address, int(match.group("when")), int(match.group("port")),
                                   match.group("proto"), f"{path}:{number}"))
    return records, warnings


def _template_regex(template: str) -> re.Pattern[str]:
    """A KILL_HOSTS_DENY template as a regex capturing the address.

    Spacing around ``:`` may differ; other whitespace must be there.  Runs of whitespace become one
    ``\\s*`` or ``\\s+``, never two loops in a row (that backtracked in O(n^2) on long blank runs).
    A second ``$TARGET$`` must repeat the first address.
    """
    items: list[str | bool] = [False]  # a bool is whitespace: True required, False optional
    seen_target = False
    for part in re.split(r"(\$TARGET\$|\$PORT\$|\$MODE\$|\s+|:)", template.strip()):
        if part == "$TARGET$":
            items.append("(?P=addr)" if seen_target else r"(?P<addr>[0-9A-Fa-f.:\[\]]+)")
            seen_target = True
        elif part == "$PORT$":
            items.append(r"\d+")
        elif part == "$MODE$":
            items.append(r"[a-z]+")
        elif part == ":":
            items += [False, ":", False]
        elif part and part.isspace():
            items.append(True)
        elif part:
            items.append(re.escape(part))
    items.append(False)
    return re.compile("^" + _join(items) + "$")


def _join(items: list[str | bool]) -> str:
    """Regex pieces and whitespace marks -> one pattern; a run of marks becomes one loop."""
    pattern: list[str] = []
    space: bool | None = None  # pending whitespace: None none, else required?
    for item in items:
        if isinstance(item, bool):
            space = item if space is None else space and item
            continue
        if space is not None:
            pattern.append(r"\s+" if space else r"\s*")
            space = None
        pattern.append(item)
    if space is not None:
        pattern.append(r"\s+" if space else r"\s*")
    return "".join(pattern)


@dataclass(frozen=True)
class DenyLine:
    """A hosts.deny line that PortSentry wrote for a recorded address."""

    number: int
    text: str
    address: str


def parse_hosts_deny(text: str, recorded: Iterable[str],
                     templates: Iterable[str] = DEFAULT_HOSTS_DENY) -> list[DenyLine]:
    """hosts.deny lines matching a KILL_HOSTS_DENY template for a recorded address."""
    known = set(recorded)
    patterns = [_template_regex(t) for t in dict.fromkeys(templates) if "$TARGET$" in t]
    found: list[DenyLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if len(line) > MAX_LINE:
            continue  # PortSentry built the line in a 1024-byte buffer: a longer one is not its own
        for pattern in patterns:
            match = pattern.match(line)
            address = canonical(match.group("addr").strip("[]")) if match else None
            if address is not None and address in known:
                found.append(DenyLine(number, line, address))
                break
    return found


def without_lines(text: str, numbers: Iterable[int]) -> str:
    """``text`` minus the given (1-based) line numbers, line endings kept."""
    drop = set(numbers)
    lines = text.splitlines(keepends=True)
    return "".join(line for number, line in enumerate(lines, start=1) if number not in drop)


@dataclass(frozen=True)
class RejectRoute:
    """A reject/blackhole host route, or a host route via KILL_ROUTE's dead gateway."""

    family: int
    kind: str
    address: str
    table: str
    metric: int | None
    via: str | None = None

    def delete_argv(self) -> list[str]:
        """The ``ip route del`` command that removes exactly this route."""
        argv = ["ip", f"-{self.family}", "route", "del", self.kind, self.address]
        if self.via is not None:
            argv += ["via", self.via]
        argv += ["table", self.table]
        if self.metric is not None:
            argv += ["metric", str(self.metric)]
        return argv

    def describe(self) -> str:
        """Human-readable form, as ``ip route`` prints it."""
        via = f" via {self.via}" if self.via else ""
        return f"route {self.kind} {self.address}{via} table {self.table}"


def dead_gateway(kill_route: str) -> str | None:
    """The gateway of a ``route add [-host] $TARGET$ [gw] G`` KILL_ROUTE, if it is an address."""
    match = re.search(r"\broute\s+add\s+(?:-host\s+)?\$TARGET\$\s+(?:gw\s+)?(\S+)", kill_route)
    if match is None or canonical(match.group(1)) is None:
        return None
    return canonical(match.group(1))


def _route_kind(entry: dict[str, Any], gateway: str | None) -> str | None:
    """``unreachable``/``prohibit``/``blackhole``, ``unicast`` via the dead gateway, else None."""
    kind = str(entry.get("type", "unicast"))
    if kind in REJECT_ROUTE_TYPES:
        return kind
    if kind == "unicast" and gateway is not None and entry.get("gateway") == gateway:
        return kind
    return None


def parse_routes(json_text: str, family: int, recorded: Iterable[str],
                 gateway: str | None = None) -> list[RejectRoute]:
    """Host routes (``ip -j route show table all``) PortSentry added for recorded addresses."""
    known = set(recorded)
    entries: Any = json.loads(json_text) if json_text.strip() else []
    found: list[RejectRoute] = []
    for entry in entries:
        kind = _route_kind(entry, gateway)
        address = canonical(str(entry.get("dst", "")))
        if kind is None or address is None or address not in known:
            continue
        metric = entry.get("metric")
        found.append(RejectRoute(family, kind, address, str(entry.get("table", "main")),
                                 int(metric) if metric is not None else None,
                                 gateway if kind == "unicast" else None))
    return found
