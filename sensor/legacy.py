"""What PortSentry 1.2 (Debian's ``portsentry``) leaves on a host, read as data.

PortSentry's bans never expire: KILL_ROUTE adds a reject route, KILL_HOSTS_DENY
appends to /etc/hosts.deny, KILL_RUN_CMD (in the how-tos) inserts iptables DROP
rules, and every block is recorded in ``HISTORY_FILE`` and
``BLOCKED_FILE.<mode>`` as written by ``WriteBlocked()`` in portsentry_io.c::

    1063040458 - 09/08/2003 10:00:58 Host: 1.2.3.4/1.2.3.4 Port: 80 TCP Blocked

This module only parses: the record files, hosts.deny, ``ip -j route``,
``iptables-save`` and ``nft -j list ruleset`` output.  A leftover is only
recognised when it names an address PortSentry recorded and has the exact
shape PortSentry's templates produce; anything else is not ours to touch.
:mod:`sensor.migrate` does the I/O.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

RECORD_MODES = ("tcp", "udp", "stcp", "sudp", "atcp", "audp")
REJECT_ROUTE_TYPES = ("unreachable", "prohibit", "blackhole")
DEFAULT_HOSTS_DENY = ("ALL: $TARGET$ : DENY", "ALL: $TARGET$")
MAX_LINE = 1024  # PortSentry's MAXBUF
LAST_TIME = 253402300799  # 9999-12-31 23:59:59 UTC: later record times are not dates

_RECORD = re.compile(
    r"^(?P<when>\d+) - \d\d/\d\d/\d{4} \d\d:\d\d:\d\d "
    r"Host: (?P<name>\S*)/(?P<addr>[0-9A-Fa-f.:]+) Port: (?P<port>\d+) (?P<proto>TCP|UDP) Blocked\s*$")


def canonical(text: str) -> str | None:
    """An address in canonical form (``/32``/``/128`` allowed), or None."""
    item = text.strip()
    for suffix in ("/32", "/128"):
        if item.endswith(suffix):
            item = item[: -len(suffix)]
    try:
        return str(ipaddress.ip_address(item))
    except ValueError:
        return None


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


@dataclass(frozen=True)
class IptablesRule:
    """An iptables rule of the shape PortSentry's KILL_* templates insert."""

    family: int
    table: str
    chain: str
    spec: tuple[str, ...]
    address: str

    def delete_argv(self) -> list[str]:
        """The ``iptables -D`` command that removes exactly this rule."""
        tool = "iptables" if self.family == 4 else "ip6tables"
        return [tool, "-t", self.table, "-D", self.chain, *self.spec]

    def describe(self) -> str:
        """Human-readable form, as ``iptables-save`` prints it."""
        tool = "iptables" if self.family == 4 else "ip6tables"
        return f"{tool} -t {self.table} -A {self.chain} {shlex.join(self.spec)}"


@dataclass(frozen=True)
class IptablesDump:
    """Parsed ``iptables-save``: candidate rules, tables seen, nf_tables backend."""

    rules: tuple[IptablesRule, ...]
    tables: tuple[str, ...]
    nft_backend: bool


# Options PortSentry's templates produce (long forms folded onto short ones).
_IPT_OPTIONS = {"-s": "-s", "--source": "-s", "-i": "-i", "--in-interface": "-i", "-j": "-j",
                "--jump": "-j", "-m": "-m", "--match": "-m", "--reject-with": "--reject-with",
                "--limit": "--limit", "--limit-burst": "--limit-burst",
                "--log-prefix": "--log-prefix", "--log-level": "--log-level"}
# The how-tos' LOG rule rate-limits; any other match (-m comment included) is someone else's rule.
_IPT_MATCHES = {"limit"}
DEFAULT_CHAINS = frozenset({("filter", "INPUT")})
_IPTABLES = re.compile(r"^(?:.*/)?ip6?tables(?:-legacy|-nft)?$")
_IPT_CHAIN_OPTIONS = ("-I", "--insert", "-A", "--append")


def kill_chains(kill_run_cmd: str) -> frozenset[tuple[str, str]]:
    """(table, chain) pairs the iptables commands of a KILL_RUN_CMD insert into; INPUT if none.

    fail2ban's own ``f2b-*`` chains never count, even if named.
    """
    lexer = shlex.shlex(kill_run_cmd, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:
        return DEFAULT_CHAINS
    found: set[tuple[str, str]] = set()
    command: list[str] = []
    for token in [*tokens, ";"]:
        if token and all(c in "();&|" for c in token):
            found |= _command_chains(command)
            command = []
        else:
            command.append(token)
    return frozenset(found) or DEFAULT_CHAINS


def _command_chains(command: list[str]) -> set[tuple[str, str]]:
    """(table, chain) of one ``iptables -I CHAIN ...`` command."""
    if not command or _IPTABLES.match(command[0]) is None:
        return set()
    table, chains = "filter", []
    for option, value in itertools.pairwise(command[1:]):
        if option in ("-t", "--table"):
            table = value
        elif option in _IPT_CHAIN_OPTIONS:
            chains.append(value)
    return {(table, chain) for chain in chains if not chain.startswith("f2b-")}


def _ipt_options(tokens: list[str]) -> dict[str, list[str]] | None:
    """Option -> values for a rule, or None if it has anything PortSentry never wrote."""
    options: dict[str, list[str]] = {}
    index = 0
    while index < len(tokens):
        option = tokens[index]
        if option not in _IPT_OPTIONS or index + 1 >= len(tokens):
            return None
        options.setdefault(_IPT_OPTIONS[option], []).append(tokens[index + 1])
        index += 2
    return options


def _ours(options: dict[str, list[str]]) -> bool:
    """True for ``-s X -j DROP|REJECT`` and the how-tos' ``-s X -m limit -j LOG 'Portsentry...'``."""
    target = options.get("-j", [""])[-1]
    if any(m not in _IPT_MATCHES for m in options.get("-m", [])) or len(options.get("-s", [])) != 1:
        return False
    if target in ("DROP", "REJECT"):
        return "--log-prefix" not in options and "--limit" not in options
    prefix = " ".join(options.get("--log-prefix", []))
    return target == "LOG" and "portsentry" in prefix.lower()


def parse_iptables_save(text: str, family: int, recorded: Iterable[str],
                        chains: Iterable[tuple[str, str]] = DEFAULT_CHAINS) -> IptablesDump:
    """Rules in ``iptables-save`` output that PortSentry inserted for recorded addresses.

    Only rules in ``chains`` ((table, chain) pairs from :func:`kill_chains`) count; never fail2ban's
    ``f2b-*`` chains.
    """
    known = set(recorded)
    allowed = {(table, chain) for table, chain in chains if not chain.startswith("f2b-")}
    rules: list[IptablesRule] = []
    tables: list[str] = []
    table = "filter"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            tables.append(table)
            continue
        if not line.startswith("-A "):
            continue
        try:
            tokens = shlex.split(line)
        except ValueError:
            continue
        if len(tokens) < 2 or (table, tokens[1]) not in allowed:
            continue
        options = _ipt_options(tokens[2:])
        if options is None or not _ours(options):
            continue
        address = canonical(options["-s"][0])
        if address is not None and address in known:
            rules.append(IptablesRule(family, table, tokens[1], tuple(tokens[2:]), address))
    return IptablesDump(tuple(rules), tuple(tables), "(nf_tables)" in text[:300])


@dataclass(frozen=True)
class NftRule:
    """A native nftables rule ``ip[6] saddr X [counter] drop|reject``."""

    family: str
    table: str
    chain: str
    handle: int
    address: str
    verdict: str

    def delete_argv(self) -> list[str]:
        """The ``nft delete rule`` command that removes exactly this rule."""
        return ["nft", "delete", "rule", self.family, self.table, self.chain, "handle", str(self.handle)]

    def describe(self) -> str:
        """Human-readable form, close to ``nft list ruleset``."""
        field = "ip6" if ":" in self.address else "ip"
        return (f"nft {self.family} {self.table} {self.chain}: {field} saddr {self.address} "
                f"{self.verdict} (handle {self.handle})")


def _nft_saddr(expr: dict[str, Any]) -> str | None:
    """The address of a ``ip/ip6 saddr == ADDR`` match, else None."""
    match = expr.get("match")
    if not isinstance(match, dict) or match.get("op") != "==":
        return None
    payload = match.get("left", {}).get("payload", {}) if isinstance(match.get("left"), dict) else {}
    if payload.get("field") != "saddr" or payload.get("protocol") not in ("ip", "ip6"):
        return None
    right = match.get("right")
    return canonical(right) if isinstance(right, str) else None


def _nft_shape(exprs: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(address, verdict) when a rule is exactly saddr match, optional counter, drop/reject."""
    body = [e for e in exprs if "counter" not in e]
    if len(body) != 2:
        return None
    address = _nft_saddr(body[0])
    verdict = next(iter(body[1]), "")
    if address is None or verdict not in ("drop", "reject"):
        return None
    return address, verdict


def parse_nft_ruleset(json_text: str, recorded: Iterable[str],
                      skip_tables: Iterable[tuple[str, str]] = ()) -> list[NftRule]:
    """Native nft rules blocking recorded addresses; ``skip_tables`` are iptables-nft's own."""
    known = set(recorded)
    skip = set(skip_tables)
    data: Any = json.loads(json_text) if json_text.strip() else {"nftables": []}
    found: list[NftRule] = []
    for item in data.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or (rule.get("family"), rule.get("table")) in skip:
            continue
        if "comment" in rule or str(rule.get("table", "")).startswith("f2b-") \
                or str(rule.get("chain", "")).startswith("f2b-"):
            continue  # an admin's annotated rule, or fail2ban's own
        shape = _nft_shape(rule.get("expr", []))
        if shape is None or shape[0] not in known:
            continue
        found.append(NftRule(str(rule["family"]), str(rule["table"]), str(rule["chain"]),
                             int(rule["handle"]), shape[0], shape[1]))
    return found
