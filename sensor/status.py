"""``portsentry-sensor status ADDRESS``: everything about one address.

Its alerts in the journal (first/last, ports, scan types; the same trusted
match as ``report``), whether the sensor's ignore list would drop it and by
which entry (the configured IGNORE_FILE, parsed by :mod:`sensor.ignore`, plus
loopback and this host's own addresses), fail2ban's state of it (from the
database, read-only: banned or permanent, rung, ends at) and the one command
that unbans it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from sensor.activity import ActivityError
from sensor.addr import canonical
from sensor.config import DEFAULT_CONFIG, ConfigError, load_config
from sensor.fail2bandb import normalize
from sensor.ignore import LOOPBACK, IgnoreFileError, Network, local_networks, read_ignore_file
from sensor.report import gather


def ignored_by(address: str, config_path: str, proc: str = "/proc") -> dict[str, Any]:
    """Which ignore entry (if any) covers ``address``: configured file first, then loopback, then local."""
    ip = ipaddress.ip_address(canonical(address))
    try:
        config = load_config(config_path)
        configured: tuple[Network, ...] = read_ignore_file(config.ignore_file)
        where = config.ignore_file
    except (ConfigError, IgnoreFileError, OSError) as exc:
        return {"ignored": None, "entry": None, "where": None, "error": f"cannot read the ignore list: {exc}"}
    groups: list[tuple[str, tuple[Network, ...]]] = [
        (where, configured), ("loopback", LOOPBACK), ("this host's own address", local_networks(proc))]
    for label, networks in groups:
        for network in networks:
            if network.version == ip.version and ip in network:
                return {"ignored": True, "entry": str(network), "where": label, "error": None}
    return {"ignored": False, "entry": None, "where": None, "error": None}


def describe(address: str, args: argparse.Namespace) -> dict[str, Any]:
    data, _ = gather(args, address)
    source = next((s for s in data["sources"] if s["address"] == address), None)
    ban = None
    bans = data["fail2ban"]
    for entry in bans["bans"]:
        if entry["address"] == address:
            ban = entry
    return {
        "schema_version": data["schema_version"],
        "address": address,
        "since": data["since"] if args.since else None,
        "until": data["until"],
        "alerts": source,
        "ignore": ignored_by(address, args.config),
        "fail2ban": {"database": bans["database"], "jail": bans["jail"], "error": bans["error"],
                     "state": (source or {}).get("fail2ban") or _state_only(ban)},
        "unban": f"fail2ban-client set {args.jail} unbanip {address}",
    }


def _state_only(ban: dict[str, Any] | None) -> dict[str, Any] | None:
    if ban is None:
        return None
    return {"state": "permanent" if ban["permanent"] else "banned", "rung": ban["rung"],
            "permanent": ban["permanent"], "banned_at": ban["banned_at"], "ends_at": ban["ends_at"]}


def render_text(info: dict[str, Any]) -> str:
    out = [info["address"]]
    alerts = info["alerts"]
    if alerts is None:
        out.append("  alerts:   none in the journal" + (f" since {info['since']}" if info["since"] else ""))
    else:
        types = ", ".join(f"{k} x{v}" for k, v in alerts["scan_types"].items()) or "-"
        ports = ", ".join(alerts["ports"][:20]) + (" ..." if len(alerts["ports"]) > 20 else "")
        out += [f"  alerts:   {alerts['alerts']} lines, {alerts['scans']} scans, "
                f"first {alerts['first_seen']}, last {alerts['last_seen']}",
                f"  ports:    {alerts['ports_touched']} touched: {ports}",
                f"  scans:    {types}",
                f"  verified: {'yes (completed TCP handshake)' if alerts['verified'] else 'no'}"]
    ignore = info["ignore"]
    if ignore["error"]:
        out.append(f"  ignored:  unknown: {ignore['error']}")
    elif ignore["ignored"]:
        out.append(f"  ignored:  yes, by {ignore['entry']} ({ignore['where']})")
    else:
        out.append("  ignored:  no")
    f2b = info["fail2ban"]
    state = f2b["state"]
    if f2b["error"]:
        out.append(f"  fail2ban: unknown: {f2b['error']}")
    elif state is None:
        out.append(f"  fail2ban: not banned in jail {f2b['jail']}")
    elif state["state"] == "permanent":
        out.append(f"  fail2ban: banned permanently (rung {state['rung']}) since {state['banned_at']}")
    elif state["state"] == "banned":
        out.append(f"  fail2ban: banned (rung {state['rung']}) since {state['banned_at']}, ends {state['ends_at']}")
    else:
        out.append(f"  fail2ban: not banned now (last ban rung {state['rung']} ended {state['ends_at']})")
    out.append(f"  unban:    {info['unban']}")
    return "\n".join(out) + "\n"


def handle(args: argparse.Namespace) -> int:
    address = normalize(args.address)
    try:
        if address is None:
            raise ActivityError(f"'{args.address[:60]}' is not an IPv4 or IPv6 address")
        info = describe(address, args)
    except ActivityError as exc:
        print(f"portsentry-sensor status: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(json.dumps(info, indent=2) + "\n" if args.format == "json" else render_text(info))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``status``."""
    from sensor.report import journal_args
    cmd = sub.add_parser(
        "status", help="everything about one address: alerts, ignore list, fail2ban state, unban command",
        description="Show one address's alerts, whether the ignore list covers it, its fail2ban ban "
                    "(rung, end) and the command that unbans it.")
    cmd.add_argument("address", metavar="ADDRESS")
    cmd.add_argument("--since", default="", help="only alerts since (24h, 7d, ISO time; default: all)")
    cmd.add_argument("--until", default="now", help=argparse.SUPPRESS)
    cmd.add_argument("--format", default="text", choices=("text", "json"))
    cmd.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG,
                     help=f"sensor configuration, for IGNORE_FILE (default: {DEFAULT_CONFIG})")
    journal_args(cmd)
    cmd.set_defaults(func=handle)
