"""``migrate-bans``, the plan: what PortSentry left behind and what to do about it.

Reads PortSentry's settings, its block records, the routes, firewall rules and
hosts.deny lines it left (recognised by :mod:`sensor.migration.leftovers` and
:mod:`sensor.migration.leftover_rules`), chooses which addresses go to fail2ban
and lists every change in the order :mod:`sensor.migration.banapply` makes it.
Changes nothing.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from sensor.config import ConfigError
from sensor.ignore import IgnoreList, Network, ignore_entries
from sensor.migration.hostsystem import System
from sensor.migration.leftover_rules import kill_chains, parse_iptables_save, parse_nft_ruleset
from sensor.migration.leftovers import (
    DEFAULT_HOSTS_DENY,
    RECORD_MODES,
    DenyLine,
    dead_gateway,
    parse_hosts_deny,
    parse_records,
    parse_routes,
)
from sensor.migration.translate import classify_lines

DEFAULT_FROM = "/etc/portsentry"
LEGACY_HISTORY = "/var/lib/portsentry/portsentry.history"
LEGACY_BLOCKED = "/var/lib/portsentry/portsentry.blocked"
HOSTS_DENY = "/etc/hosts.deny"
SENSOR_IGNORE = "/etc/portsentry-sensor/portsentry.ignore"


@dataclass(frozen=True)
class Step:
    """One change of the plan."""

    kind: str
    text: str
    argv: tuple[str, ...] = ()


@dataclass
class Leftovers:
    """What PortSentry left behind, and what to do about it."""

    records: dict[str, int] = field(default_factory=dict)  # address -> last block time
    blocked_files: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    deny: list[DenyLine] = field(default_factory=list)
    removals: list[Step] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """migrate-bans settings."""

    recent_days: float = 7.0
    jail: str = "portsentry"
    fail2ban_client: tuple[str, ...] = ("fail2ban-client",)
    legacy_conf: str = DEFAULT_FROM + "/portsentry.conf"


def legacy_settings(system: System, path: str, notes: list[str]) -> dict[str, str]:
    """HISTORY_FILE, BLOCKED_FILE, KILL_HOSTS_DENY as PortSentry read them (lenient)."""
    text = system.read(path)
    if text is None:
        return {}
    try:
        lines = classify_lines(text, path)
    except ConfigError as exc:
        notes.append(f"{exc} (using PortSentry's default paths)")
        return {}
    first: dict[str, str | None] = {}
    for line in lines:  # PortSentry read the first line of a key, and skipped it without quotes
        if line.key:
            first.setdefault(line.key, line.value)
    return {key: value for key, value in first.items() if value is not None}


def _read_records(system: System, leftovers: Leftovers, settings: dict[str, str]) -> None:
    history = settings.get("HISTORY_FILE", LEGACY_HISTORY)
    blocked = settings.get("BLOCKED_FILE", LEGACY_BLOCKED)
    sources = [(history, False)] + [(f"{blocked}.{mode}", True) for mode in RECORD_MODES]
    for path, is_blocked in sources:
        text = system.read(path)
        if text is None:
            continue
        if is_blocked:
            leftovers.blocked_files.append(path)
        records, warnings = parse_records(text, path)
        leftovers.notes += warnings
        for record in records:
            leftovers.records[record.address] = max(record.when, leftovers.records.get(record.address, 0))
            if is_blocked:
                leftovers.blocked.add(record.address)


def _command(system: System, argv: list[str], leftovers: Leftovers) -> str | None:
    """Output of a listing command, or None (noted) if it failed."""
    result = system.run(argv)
    if result.rc == 127:
        return None
    if result.rc != 0:
        leftovers.notes.append(f"`{' '.join(argv)}` failed: {result.err.strip()[:200]}")
        return None
    return result.out


def _add(leftovers: Leftovers, kind: str, text: str, argv: list[str], address: str) -> None:
    leftovers.removals.append(Step(kind, text, tuple(argv)))
    leftovers.active.add(address)


def _find_routes(system: System, leftovers: Leftovers, recorded: set[str], kill_route: str) -> None:
    gateway = dead_gateway(kill_route)
    for family in (4, 6):
        out = _command(system, ["ip", f"-{family}", "-j", "route", "show", "table", "all"], leftovers)
        for route in parse_routes(out or "", family, recorded, gateway):
            _add(leftovers, "route", route.describe(), route.delete_argv(), route.address)


def _find_firewall(system: System, leftovers: Leftovers, recorded: set[str], kill_run_cmd: str) -> None:
    managed: list[tuple[str, str]] = []
    chains = kill_chains(kill_run_cmd)
    for family, tool in ((4, "iptables-save"), (6, "ip6tables-save")):
        out = _command(system, [tool], leftovers)
        dump = parse_iptables_save(out or "", family, recorded, chains)
        if dump.nft_backend:
            managed += [("ip" if family == 4 else "ip6", table) for table in dump.tables]
        for rule in dump.rules:
            _add(leftovers, "iptables", rule.describe(), rule.delete_argv(), rule.address)
    out = _command(system, ["nft", "-j", "list", "ruleset"], leftovers)
    for nft_rule in parse_nft_ruleset(out or "", recorded, managed):
        _add(leftovers, "nft", nft_rule.describe(), nft_rule.delete_argv(), nft_rule.address)


def collect(system: System, options: Options) -> Leftovers:
    """Read every trace PortSentry left; no changes."""
    leftovers = Leftovers()
    settings = legacy_settings(system, options.legacy_conf, leftovers.notes)
    _read_records(system, leftovers, settings)
    recorded = set(leftovers.records)
    if not recorded:
        return leftovers
    _find_firewall(system, leftovers, recorded, settings.get("KILL_RUN_CMD", ""))
    _find_routes(system, leftovers, recorded, settings.get("KILL_ROUTE", ""))
    deny_text = system.read(HOSTS_DENY)
    templates = (*DEFAULT_HOSTS_DENY, settings.get("KILL_HOSTS_DENY", ""))
    leftovers.deny = parse_hosts_deny(deny_text or "", recorded, templates)
    leftovers.active |= {line.address for line in leftovers.deny}
    return leftovers


def _ignore_list(system: System, notes: list[str]) -> IgnoreList:
    """Addresses never handed to fail2ban: old and new ignore files, this host.

    A bad line is skipped (PortSentry did too) and named in ``notes``; the file's other lines count.
    """
    configured: list[Network] = []
    skipped: list[str] = []
    for path in (DEFAULT_FROM + "/portsentry.ignore.static", DEFAULT_FROM + "/portsentry.ignore",
                 SENSOR_IGNORE):
        entries = ignore_entries(system.read(path) or "", path, skipped)
        configured += [entry.network for entry in entries if entry.network is not None]
    notes += [f"{error} (line skipped)" for error in skipped]
    return IgnoreList.build(configured, system.local_networks())


def handover(system: System, leftovers: Leftovers, options: Options) -> tuple[list[str], list[str]]:
    """(addresses to ban in fail2ban, notes on those that are not)."""
    notes: list[str] = []
    ignore = _ignore_list(system, notes)
    cutoff = system.now() - options.recent_days * 86400
    chosen: list[str] = []
    for address in sorted(leftovers.active | leftovers.blocked, key=_sort_key):
        when = leftovers.records.get(address, 0)
        day = time.strftime("%Y-%m-%d", time.localtime(when))
        if address in ignore:
            notes.append(f"{address}: in the ignore list or this host's own: unblocked, not banned")
        elif when < cutoff:
            notes.append(f"{address}: last blocked {day}, older than {options.recent_days:g} days: "
                         "unblocked, not banned")
        else:
            chosen.append(address)
    return chosen, notes


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def plan_steps(leftovers: Leftovers, chosen: list[str], options: Options) -> list[Step]:
    """Every change, in the order it is applied: ban first, then unblock."""
    steps: list[Step] = []
    if chosen:
        steps.append(Step("fail2ban", f"ban in fail2ban jail '{options.jail}' (expires): "
                          + " ".join(chosen),
                          (*options.fail2ban_client, "set", options.jail, "banip", *chosen)))
    steps += leftovers.removals
    steps += [Step("hosts.deny", f"{HOSTS_DENY}:{line.number}: remove {line.text.strip()!r}")
              for line in leftovers.deny]
    steps += [Step("records", f"{path}: archive (PortSentry's list of current blocks)")
              for path in leftovers.blocked_files]
    return steps
