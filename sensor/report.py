"""``portsentry-sensor report``: who scanned this host, what they hit, who is banned.

Reads the journal and fail2ban's database (:mod:`sensor.activity`, :mod:`sensor.fail2bandb`) and renders
text (a terminal chart that fits 80 columns; colour only on a terminal), JSON
(stable: ``schema_version``, documented in README.md "Watching it") or one
self-contained HTML file (charts drawn by Debian's python3-pygal as inline SVG,
no script or style fetched from anywhere).  Times are UTC.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

from sensor import activity as act
from sensor.activity import Activity, ActivityError, Source
from sensor.atomicfile import write_atomic
from sensor.fail2bandb import DEFAULT_JAIL, Bans, default_dbfile, read_bans

SCHEMA_VERSION = 1
FORMATS = ("text", "json", "html")
CHART_ROWS = 48          # at most this many bars: longer periods use wider buckets
BAR_WIDTH = 50           # 80 columns: 13 label + 2 + 50 bar + 1 + up to 7 digits
UNBAN = "fail2ban-client set {jail} unbanip {address}"


def iso(seconds: float | None) -> str | None:
    """UTC, ISO 8601 with a Z, to the second."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def short(seconds: float) -> str:
    return time.strftime("%m-%d %H:%M", time.gmtime(seconds))


# --- the model every format renders ------------------------------------------------

def ban_state(bans: Bans, address: str, now: float) -> dict[str, Any] | None:
    """``banned``/``permanent``/``expired`` with rung and times; None if fail2ban never banned it."""
    ban = bans.by_address.get(address)
    if ban is None:
        return None
    state = "permanent" if ban.permanent else ("banned" if ban.active(now) else "expired")
    return {"state": state, "rung": ban.rung, "permanent": ban.permanent,
            "banned_at": iso(ban.banned_at), "ends_at": iso(ban.ends_at)}


def source_record(source: Source, bans: Bans, now: float, jail: str) -> dict[str, Any]:
    return {
        "address": source.address,
        "family": source.family,
        "alerts": source.alerts,
        "scans": source.scans,
        "ports_touched": source.ports_touched,
        "ports": [f"{proto}/{port}" for proto, port in sorted(source.ports)],
        "scan_types": dict(sorted(source.scan_types.items())),
        "verified": source.verified,
        "first_seen": iso(source.first_us / 1e6),
        "last_seen": iso(source.last_us / 1e6),
        "fail2ban": ban_state(bans, source.address, now),
        "unban": UNBAN.format(jail=jail, address=source.address),
    }


def hourly(activity: Activity) -> list[dict[str, Any]]:
    """One entry per hour of the period, zero-filled."""
    last = int(math.ceil(activity.until / 3600))
    first = int(activity.since // 3600) if activity.since > 0 else min(activity.hourly_alerts, default=last)
    return [{"hour": iso(h * 3600), "scans": activity.hourly_scans.get(h, 0),
             "alerts": activity.hourly_alerts.get(h, 0)} for h in range(first, last)]


def build(activity: Activity, bans: Bans, now: float, source_label: str,
          limit: int | None = None) -> dict[str, Any]:
    """The report as plain data: what ``--format json`` prints (every source), and what text and
    html draw (the first ``limit`` sources)."""
    ordered = sorted(activity.sources.values(),
                     key=lambda s: (-s.ports_touched, -s.alerts, s.address))[:limit]
    activity.fill_ports([s.address for s in ordered])
    sources = [source_record(s, bans, now, bans.jail) for s in ordered]
    banned = [b for b in bans.by_address.values() if b.active(now)]
    ports = [{"port": f"{proto}/{port}", "alerts": count,
              "sources": activity.port_sources[(proto, port)]}
             for (proto, port), count in sorted(activity.ports.items(), key=lambda kv: (-kv[1], kv[0]))]
    v4 = [s for s in activity.sources.values() if s.family == "ipv4"]
    v6 = [s for s in activity.sources.values() if s.family == "ipv6"]
    return {
        "schema_version": SCHEMA_VERSION,
        "generated": iso(now),
        "since": iso(activity.since),
        "until": iso(activity.until),
        "journal": {"source": source_label, "match": activity.match},
        "totals": {
            "alert_lines": activity.alert_lines,
            "scans": sum(s.scans for s in activity.sources.values()),
            "sources": len(activity.sources),
            "ipv4": {"sources": len(v4), "alerts": sum(s.alerts for s in v4)},
            "ipv6": {"sources": len(v6), "alerts": sum(s.alerts for s in v6)},
            "banned_now": len(banned),
            "flood_episodes": len(activity.floods),
        },
        "hourly": hourly(activity),
        "sources": sources,
        "ports": ports,
        "floods": [{"start": iso(f.start_us / 1e6), "end": iso(f.end_us / 1e6), "lines": f.lines,
                    "ended": f.closed, "suppressed": f.suppressed, "message": f.first_message}
                   for f in activity.floods],
        "fail2ban": {
            "database": bans.database, "jail": bans.jail, "error": bans.error or None,
            "bans": [{"address": b.address, "rung": b.rung, "permanent": b.permanent,
                      "banned_at": iso(b.banned_at), "ends_at": iso(b.ends_at)}
                     for b in sorted(banned, key=lambda b: b.address)],
        },
    }


# --- text -------------------------------------------------------------------------

def chart_rows(data: dict[str, Any]) -> tuple[int, list[tuple[str, int]]]:
    """(hours per bar, [(label, scans)]) for the period."""
    width = max(1, math.ceil(len(data["hourly"]) / CHART_ROWS))
    rows: list[tuple[str, int]] = []
    for index in range(0, len(data["hourly"]), width):
        chunk = data["hourly"][index:index + width]
        label = chunk[0]["hour"][5:16].replace("T", " ")
        rows.append((label, sum(h["scans"] for h in chunk)))
    return width, rows


def text_chart(data: dict[str, Any], colour: bool) -> list[str]:
    width, rows = chart_rows(data)
    top = max((n for _, n in rows), default=0)
    unit = "hour" if width == 1 else f"{width} hours"
    lines = [f"Scans per {unit} (UTC; a full bar is {top})"]
    for label, count in rows:
        length = 0 if top == 0 else max(1 if count else 0, round(count * BAR_WIDTH / top))
        bar = "#" * length
        if colour and bar:
            bar = f"\033[31m{bar}\033[0m"
        lines.append(f"{label} |{bar}{' ' * (BAR_WIDTH - length)} {count}")
    return lines


def ban_text(state: dict[str, Any] | None) -> str:
    if state is None:
        return "-"
    if state["state"] == "permanent":
        return f"permanent (rung {state['rung']})"
    end = state["ends_at"][5:16].replace("T", " ")
    if state["state"] == "banned":
        return f"banned r{state['rung']} to {end}"
    return f"expired r{state['rung']}"


def render_text(data: dict[str, Any], top: int, colour: bool) -> str:
    totals = data["totals"]
    out = [f"portsentry-sensor report, {data['since']} to {data['until']} ({data['journal']['source']}, "
           f"{data['journal']['match']})",
           f"{totals['scans']} scans ({totals['alert_lines']} alert lines) from {totals['sources']} sources: "
           f"IPv4 {totals['ipv4']['sources']}, IPv6 {totals['ipv6']['sources']}; "
           f"{totals['banned_now']} banned now; {totals['flood_episodes']} flood episodes", ""]
    out += text_chart(data, colour)
    out += ["", f"Top sources (of {totals['sources']})",
            f"{'address':<28} {'ports':>5} {'scans':>5} {'types':<12} {'ver':<3} "
            f"{'first seen':<11} {'last seen':<11} fail2ban"]
    for s in data["sources"][:top]:
        types = ",".join(s["scan_types"]) or "-"
        out.append(f"{s['address']:<28} {s['ports_touched']:>5} {s['scans']:>5} {types[:12]:<12} "
                   f"{'yes' if s['verified'] else 'no':<3} {s['first_seen'][5:16].replace('T', ' '):<11} "
                   f"{s['last_seen'][5:16].replace('T', ' '):<11} {ban_text(s['fail2ban'])}")
    out += ["", "Top ports", f"{'port':<10} {'alerts':>7} {'sources':>7}"]
    out += [f"{p['port']:<10} {p['alerts']:>7} {p['sources']:>7}" for p in data["ports"][:top]]
    if data["floods"]:
        out += ["", "Flood episodes (adminalert: flood lines)"]
        out += [f"{f['start']} to {f['end']}{'' if f['ended'] else ' (not ended)'}  {f['lines']} line(s), "
                f"{'?' if f['suppressed'] is None else f['suppressed']} suppressed" for f in data["floods"]]
    f2b = data["fail2ban"]
    out += ["", f"fail2ban jail {f2b['jail']}: " + (f"unknown: {f2b['error']}" if f2b["error"] else
                                                    f"{len(f2b['bans'])} banned now ({f2b['database']})")]
    return "\n".join(out) + "\n"


# --- the command ----------------------------------------------------------------------

def journal_label(args: argparse.Namespace) -> str:
    if args.file:
        return "file " + ",".join(args.file)
    if args.directory:
        return f"directory {args.directory}"
    return "system journal"


def gather(args: argparse.Namespace, address: str | None = None,
           limit: int | None = None) -> tuple[dict[str, Any], Activity]:
    """Read the journal and fail2ban as the arguments say; the report data."""
    now = act.now()
    until = act.parse_when(args.until, "--until", now)
    since = act.parse_when(args.since, "--since", now) if args.since else 0.0
    if since >= until:
        raise ActivityError(f"--since {args.since} is not before --until {args.until}")
    match = act.check_match(args.journalmatch)
    reader = act.open_reader(args.file, args.directory)   # a bad path is reported here, once
    if address is None and since > 0 and (os.cpu_count() or 1) > 1:
        reader.close()         # two spans of time read in parallel, each with its own reader
        activity = act.read_activity_split(args.file, args.directory, match, since, until, 2)
    else:
        try:
            activity = act.read_activity(reader, match, since, until, address)
        finally:
            reader.close()
    bans = read_bans(args.fail2ban_db or default_dbfile(), args.jail)
    return build(activity, bans, now, journal_label(args), limit), activity


def write_output(text: str, path: str | None) -> None:
    if path is None:
        sys.stdout.write(text)
        return
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise ActivityError(f"--output: {path}: {exc.strerror or exc}") from None


def handle(args: argparse.Namespace) -> int:
    try:
        if args.top < 1:
            raise ActivityError("--top: must be 1 or more")
        data, _ = gather(args, limit=None if args.format == "json" else args.top)
        if args.format == "json":
            text = json.dumps(data, indent=2) + "\n"
        elif args.format == "html":
            from sensor.reporthtml import render_html
            text = render_html(data, args.top)
        else:
            colour = args.output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
            text = render_text(data, args.top, colour)
        write_output(text, args.output)
    except ActivityError as exc:
        print(f"portsentry-sensor report: {exc}", file=sys.stderr)
        return 2
    return 0


def journal_args(cmd: argparse.ArgumentParser) -> None:
    """Where alerts and bans are read: shared with ``status``."""
    where = cmd.add_mutually_exclusive_group()
    where.add_argument("--file", action="append", metavar="FILE",
                       help="read this journal file instead of the system journal (repeatable)")
    where.add_argument("--directory", "-D", metavar="DIR", help="read the journal files in DIR")
    cmd.add_argument("--journalmatch", default=act.DEFAULT_MATCH, metavar="_FIELD=value",
                     help=f"the trusted field that proves an entry is the sensor's (default: "
                          f"{act.DEFAULT_MATCH}; or _UID=uid, _PID=pid)")
    cmd.add_argument("--fail2ban-db", metavar="FILE",
                     help="fail2ban's database (default: dbfile from /etc/fail2ban/fail2ban.conf)")
    cmd.add_argument("--jail", default=DEFAULT_JAIL, help="fail2ban jail (default: portsentry)")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``report``."""
    cmd = sub.add_parser(
        "report", help="who scanned this host, what they hit, who is banned (text, json, html)",
        description="Summarise the sensor's alerts from the journal and fail2ban's current bans. "
                    "Times are UTC.")
    cmd.add_argument("--since", default="24h", help="start: 24h, 7d, 90m ago, or an ISO time (default: 24h)")
    cmd.add_argument("--until", default="now", help="end (default: now)")
    cmd.add_argument("--format", default="text", choices=FORMATS, help="text (default), json or html")
    cmd.add_argument("--output", "-o", metavar="FILE", help="write here (atomically) instead of stdout")
    cmd.add_argument("--top", type=int, default=10, help="rows in the top tables (default: 10)")
    journal_args(cmd)
    cmd.set_defaults(func=handle)
