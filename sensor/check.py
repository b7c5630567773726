"""``portsentry-sensor check``: validate and show the port plan, change nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from sensor.config import Config
from sensor.listeners import allocate, fd_budget, limit_summary
from sensor.loaded import load_all
from sensor.portplan import PortPlan, Skip, build_plan
from sensor.portspec import format_ports
from sensor.raw.liveports import read_listening

MODE_TEXT = {
    "tcp": "bound sockets", "udp": "bound sockets",
    "stcp": "raw sockets on TCP_PORTS", "sudp": "raw sockets on UDP_PORTS",
    "atcp": "raw sockets, every unused port", "audp": "raw sockets, every unused port",
}


def _skips(skips: Iterable[Skip]) -> list[str]:
    by_reason: dict[str, list[int]] = {}
    for skip in skips:
        by_reason.setdefault(skip.reason, []).append(skip.port)
    return [f"    skipped {format_ports(ports)}: {reason}" for reason, ports in by_reason.items()]


def render_plan(config: Config, plan: PortPlan, in_use: dict[str, set[int]],
                room: tuple[int, int] | None = None) -> list[str]:
    """Human-readable plan, one protocol after the other.

    ``room``: (sockets that may be opened, RLIMIT_NOFILE), as :func:`sensor.listeners.fd_budget`
    gives it; bound ports beyond it are shown as not watched, in one line, as the daemon reports them.
    """
    lines: list[str] = []
    free = {proto: [p for p in (plan.tcp_bound if proto == "tcp" else plan.udp_bound) if p not in in_use[proto]]
            for proto in ("tcp", "udp")}
    left_out, missing = allocate(free["tcp"], free["udp"], room[0] if room else None)
    for proto, modes in (("tcp", config.tcp_modes), ("udp", config.udp_modes)):
        if not modes:
            lines.append(f"{proto.upper()}: off")
            continue
        origin = dict(config.origins).get(f"{proto.upper()}_MODE", "built-in default")
        for mode in modes:
            lines.append(f"{proto.upper()}: mode {mode} ({MODE_TEXT[mode]}; from {origin})")
            if mode == proto:
                bound = plan.tcp_bound if proto == "tcp" else plan.udp_bound
                busy = [p for p in bound if p in in_use[proto]]
                starved = set(left_out.get(proto, ()))
                watched = [p for p in free[proto] if p not in starved]
                lines.append(f"    watched {len(watched)}: {format_ports(watched) or '-'}")
                if busy:
                    lines.append(f"    skipped {format_ports(busy)}: already in use by another program")
            else:
                raw = sorted(plan.raw_ports(proto))
                lines.append(f"    watched {len(raw)}: {format_ports(raw) or '-'}")
                lines += _skips(s for s in plan.skipped if s.proto == proto)
    if missing and room is not None:
        fitted = len(free["tcp"]) * 2 + len(free["udp"]) * 2 - missing
        lines.append(f"bound modes: {limit_summary(left_out, missing, room[1], fitted)}")
    return lines


def check(path: str, defaults: Iterable[str] | None, quiet: bool = False) -> int:
    """Validate; print warnings and the plan.  ConfigError propagates (exit 2)."""
    loaded = load_all(path, defaults)
    config = loaded.config
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if quiet:
        return 0
    in_use = {"tcp": read_listening("tcp"), "udp": read_listening("udp")}
    plan = build_plan(config, in_use["tcp"], in_use["udp"])
    print(f"{path}: OK")
    # `run` lifts the soft descriptor limit to the hard one before binding: count with that.
    for line in render_plan(config, plan, in_use, fd_budget(hard=True)):
        print(line)
    extra = len(loaded.ignore.networks)
    print(f"ignore list: {extra} entries (this host's addresses, loopback"
          f"{', ' + config.ignore_file if config.ignore_file else ''})")
    print(f"alert: after more than {config.scan_trigger} ports within {config.scan_window} s; "
          f"summaries every {config.summary_interval} s, at most {config.summary_max_lines} per window; "
          f"log target {config.log_target}")
    return 0
