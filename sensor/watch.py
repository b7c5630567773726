"""The watchers: bound tripwires, the raw capture, the port plan, and ports to retry.

:class:`Watchers` moves the sensor to a plan (:meth:`Watchers.apply`): it binds
the bound modes' ports (:meth:`Watchers.bind`), starts or stops the raw capture
and hands it the raw plan.  A port that could not be bound although no service
listens on it (a TIME_WAIT PortSentry left behind) is retried every
PLAN_REFRESH (:meth:`Watchers.retry_unbound`), warning only about what is new.
Every warning goes through ``warn``/``admin`` (sensor/events.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from sensor.alert import PRIORITY_NOTICE
from sensor.config import Config
from sensor.ignore import local_addresses
from sensor.listeners import BindFailure, BoundListeners, failure_lines, limit_summary
from sensor.portplan import PortPlan, build_plan
from sensor.probe import Probe
from sensor.raw.capture import RawCapture
from sensor.raw.liveports import read_listening

PROTOS = ("tcp", "udp")


def _ports(count: int) -> str:
    return f"{count} port" if count == 1 else f"{count} ports"


def describe(plan: PortPlan, bound_tcp: list[int], bound_udp: list[int]) -> str:
    """One STATUS line: what is watched."""
    parts = []
    for proto, bound in (("tcp", bound_tcp), ("udp", bound_udp)):
        if bound:
            parts.append(f"{proto} {_ports(len(bound))} bound")
        raw = plan.raw_ports(proto)
        if raw:
            parts.append(f"{plan.raw_mode(proto)} {_ports(len(raw))}")
    return "watching " + (", ".join(parts) if parts else "nothing")


class Watchers:
    """The tripwires and the raw capture of one sensor, and the plan they follow."""

    def __init__(self, on_probe: Callable[[Probe], None], admin: Callable[[str, int], None],
                 warn: Callable[[str], None], banner: str, proc: str = "/proc") -> None:
        self.on_probe, self.admin, self.warn, self.proc = on_probe, admin, warn, proc
        self.listeners = BoundListeners(on_probe, banner)
        self.capture: RawCapture | None = None
        self.plan = PortPlan()
        self.unbound: set[tuple[str, int]] = set()   # bound-mode ports to retry

    def compute_plan(self, config: Config) -> PortPlan:
        """The plan for ``config`` and the ports real services use now."""
        own_tcp = frozenset(self.listeners.watched("tcp"))
        own_udp = frozenset(self.listeners.watched("udp"))
        return build_plan(config, read_listening("tcp", self.proc),
                          read_listening("udp", self.proc), own_tcp, own_udp)

    async def apply(self, config: Config) -> None:
        """Bind/unbind tripwires and hand the raw plan to the capture."""
        plan = self.compute_plan(config)
        await self.bind(plan.tcp_bound, plan.udp_bound, config.port_banner)
        self.plan = self.compute_plan(config)
        self._apply_capture()

    async def bind(self, tcp: tuple[int, ...], udp: tuple[int, ...], banner: str) -> None:
        """Bind exactly these tripwires; warn about every port that fails."""
        await self._bind(tcp, udp, banner, warned=set())

    async def retry_unbound(self, banner: str) -> None:
        """What is bound now plus the ports worth retrying; warn only about new failures."""
        tcp, udp = (tuple(sorted(set(self.listeners.watched(proto)) | {p for q, p in self.unbound if q == proto}))
                    for proto in PROTOS)
        await self._bind(tcp, udp, banner, warned=self.unbound)

    async def _bind(self, tcp: tuple[int, ...], udp: tuple[int, ...], banner: str,
                    warned: set[tuple[str, int]]) -> None:
        failures = await self.listeners.apply(tcp, udp, banner)
        others = [f for f in failures if not f.limit]
        for line in failure_lines([f for f in others if (f.proto, f.port) not in warned]):
            self.warn(line)
        self._limited([f for f in failures if f.limit])
        watched = {proto: set(self.listeners.watched(proto)) for proto in PROTOS}
        for proto, port in sorted(self.unbound):
            if port in watched[proto]:
                self.admin(f"{proto.upper()} port {port} is free now and watched", PRIORITY_NOTICE)
        # Retry later only ports no service listens on (a TIME_WAIT left by PortSentry, say):
        # a real service's port is never taken over while that service restarts.
        listening = {proto: read_listening(proto, self.proc) for proto in PROTOS}
        self.unbound = {(f.proto, f.port) for f in others if f.port not in listening[f.proto]}

    def _limited(self, limited: list[BindFailure]) -> None:
        """One line for all ports the descriptor limit left out (never retried before the next reload)."""
        if not limited:
            return
        left_out: dict[str, list[int]] = {}
        for failure in limited:
            left_out.setdefault(failure.proto, []).append(failure.port)
        missing = sum(len(f.family.split(", ")) for f in limited)
        self.warn(limit_summary(left_out, missing, self.listeners.limit or 0, len(self.listeners.open)))

    def _apply_capture(self) -> None:
        if not (self.plan.tcp_raw or self.plan.udp_raw):
            if self.capture is not None:
                self.capture.stop()
                self.capture = None
            return
        if self.capture is None:
            self.capture = self._start_capture()
            if self.capture is None:
                return
        self.capture.set_local(str(a) for a in local_addresses(self.proc))
        self.capture.set_plan(self.plan)

    def _start_capture(self) -> RawCapture | None:
        if not RawCapture.is_supported():
            self.warn("no CAP_NET_RAW: stealth/advanced modes are off; only bound modes (tcp/udp) work")
            return None
        capture = RawCapture(self.on_probe, warn=self.warn)
        capture.start(asyncio.get_running_loop())
        return capture

    async def refresh(self, config: Config, banner: str) -> None:
        """PLAN_REFRESH: retry unbound ports; follow services in the advanced plan."""
        if self.unbound:  # e.g. a port PortSentry left in TIME_WAIT: retry it quietly
            await self.retry_unbound(banner)
        if not (self.plan.tcp_raw_mode or self.plan.udp_raw_mode):
            return
        plan = self.compute_plan(config)
        if plan != self.plan:
            self.plan = plan
            self._apply_capture()

    def watching(self) -> int:
        """How many ports are watched by any means."""
        count = len(self.listeners.watched("tcp")) + len(self.listeners.watched("udp"))
        if self.capture is not None:
            count += len(self.plan.tcp_raw) + len(self.plan.udp_raw)
        return count

    def status(self) -> str:
        """The STATUS= text."""
        plan = self.plan if self.capture is not None else PortPlan()
        return describe(plan, self.listeners.watched("tcp"), self.listeners.watched("udp"))

    def capture_stats(self) -> str:
        """The raw capture's counters, for the stop line."""
        if self.capture is None:
            return ""
        with contextlib.suppress(Exception):
            self.capture.kernel_drops()
        return "; capture: " + ", ".join(f"{k} {v}" for k, v in sorted(self.capture.stats.items()))

    def close(self) -> None:
        """Stop the capture and close every tripwire (idempotent)."""
        if self.capture is not None:
            self.capture.stop()
            self.capture = None
        self.listeners.close()
