"""The port plan: which ports are watched, by which mode, and which are skipped.

Bound modes (tcp/udp) watch TCP_PORTS/UDP_PORTS by binding them; stealth modes
(stcp/sudp) watch the same lists with raw sockets; advanced modes (atcp/audp)
watch every port from 1 to ADVANCED_PORTS_* minus ADVANCED_EXCLUDE_* minus every
port a real service listens on (the caller reads those with
:func:`sensor.raw.liveports.read_listening`).  Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sensor.config import Config


class Skip(NamedTuple):
    """A port the plan does not watch, and why."""

    proto: str
    port: int
    reason: str


@dataclass(frozen=True)
class PortPlan:
    """What one configuration watches right now."""

    tcp_bound: tuple[int, ...] = ()
    udp_bound: tuple[int, ...] = ()
    tcp_raw: frozenset[int] = frozenset()
    udp_raw: frozenset[int] = frozenset()
    tcp_raw_mode: str = ""
    udp_raw_mode: str = ""
    skipped: tuple[Skip, ...] = ()

    def raw_ports(self, proto: str) -> frozenset[int]:
        """Ports the raw-socket capture reports for ``proto``."""
        return self.tcp_raw if proto == "tcp" else self.udp_raw

    def raw_mode(self, proto: str) -> str:
        """The raw mode (stcp/atcp/sudp/audp) of ``proto``, or ''."""
        return self.tcp_raw_mode if proto == "tcp" else self.udp_raw_mode


def _advanced(upper: int, exclude: tuple[int, ...], in_use: set[int],
              proto: str, own: set[int]) -> tuple[frozenset[int], list[Skip]]:
    candidates = set(range(1, upper + 1))
    skipped = [Skip(proto, p, "excluded (ADVANCED_EXCLUDE)") for p in sorted(candidates & set(exclude))]
    busy = (in_use - own) & candidates - set(exclude)
    skipped += [Skip(proto, p, "a service listens") for p in sorted(busy)]
    return frozenset(candidates - set(exclude) - busy - own), skipped


def build_plan(config: Config, tcp_in_use: set[int], udp_in_use: set[int],
               own_tcp: frozenset[int] = frozenset(), own_udp: frozenset[int] = frozenset()) -> PortPlan:
    """Compute the plan; ``*_in_use`` are listening ports, ``own_*`` our own bound ports."""
    fields: dict[str, object] = {}
    skipped: list[Skip] = []
    for proto, modes, ports, upper, exclude, in_use, own in (
            ("tcp", config.tcp_modes, config.tcp_ports, config.advanced_ports_tcp,
             config.advanced_exclude_tcp, tcp_in_use, set(own_tcp)),
            ("udp", config.udp_modes, config.udp_ports, config.advanced_ports_udp,
             config.advanced_exclude_udp, udp_in_use, set(own_udp))):
        bound = tuple(ports) if proto in modes else ()
        fields[f"{proto}_bound"] = bound
        raw_mode = next((m for m in modes if m != proto), "")
        fields[f"{proto}_raw_mode"] = raw_mode
        if raw_mode.startswith("a"):
            raw, skips = _advanced(upper, exclude, in_use, proto, own | set(bound))
            skipped += skips
        elif raw_mode.startswith("s"):
            busy = (in_use - own) & set(ports) - set(bound)
            skipped += [Skip(proto, p, "a service listens") for p in sorted(busy)]
            raw = frozenset(set(ports) - busy - set(bound))
        else:
            raw = frozenset()
        fields[f"{proto}_raw"] = raw
    return PortPlan(skipped=tuple(skipped), **fields)  # type: ignore[arg-type]
