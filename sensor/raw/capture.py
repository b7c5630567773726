"""The raw-socket backend: stealth (stcp/sudp) and advanced (atcp/audp) modes.

Why AF_INET/AF_INET6 ``SOCK_RAW`` (one socket per family and protocol) and
not AF_PACKET: the kernel hands a raw IP socket only packets it is about to
deliver locally, after routing, reassembly of fragments (``nmap -f`` cannot
split the TCP header past us), IPv6 extension-header processing and the
INPUT firewall hook, and never our own outbound packets.  So every packet is
for this host, is not a reply we send, and a source that fail2ban has banned
stops reaching the sensor at all.  AF_PACKET would see all of that raw and
need PACKET_HOST tricks, defragmentation and ext-header walking in BPF.  The
price: an AF_INET6 raw socket returns no IPv6 header (RFC 3542), so the
destination comes from ``IPV6_RECVPKTINFO`` ancillary data via recvmsg().

A classic BPF program (:mod:`sensor.raw.bpf`) is attached to each socket so that
established traffic and packets to real services never wake Python up; it is
rebuilt on every :meth:`RawCapture.set_plan`.  Before a probe is reported,
live kernel evidence (:mod:`sensor.raw.liveports`) closes the gaps of a plan that
is only refreshed every PLAN_REFRESH seconds: a service that just started (its
listener), a reply to one of our own UDP clients (NoPorts did not move), and a
service that just stopped (its port stays unreported for RELEASE_GRACE
seconds: its clients retrying a restart are not scanners).
Needs CAP_NET_RAW.  Malformed packets are counted and dropped, never raised.
Warnings (a socket that cannot be opened, a coarser filter) go to the ``warn``
callback: the daemon makes them ``adminalert: warning:`` lines (sensor/events.py).
"""

from __future__ import annotations

import array
import asyncio
import errno
import ipaddress
import os
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sensor.addr import canonical
from sensor.portplan import PortPlan
from sensor.probe import Probe
from sensor.raw import bpf
from sensor.raw.liveports import ClosedPortProof, PortsInUse
from sensor.raw.packet import (
    PROTO_TCP,
    PROTO_UDP,
    Malformed,
    Packet,
    classify,
    ipv6_text,
    parse_ipv4,
    parse_transport,
)

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
BATCH = 256                 # packets read per wake-up before yielding to the loop
RCVBUF = 4 << 20            # asked for; the kernel caps it at net.core.rmem_max
RELEASE_GRACE = 10.0        # seconds a port a service just gave up stays unreported
SERVICE_SKIP = "a service listens"   # sensor.portplan's reason for a busy port
RECV_SIZE = bpf.SNAPLEN
_PKTINFO_SPACE = socket.CMSG_SPACE(20)  # struct in6_pktinfo
_PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}


def parse_raw_drops(text: str, inodes: set[int]) -> int:
    """Sum of the ``drops`` column of /proc/net/raw[6] rows whose inode is in ``inodes``."""
    total = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 13 and parts[9].isdigit() and int(parts[9]) in inodes and parts[12].isdigit():
            total += int(parts[12])
    return total


@dataclass
class _Endpoint:
    """One open raw socket: a family and a protocol."""

    sock: socket.socket
    family: int
    proto: str


# Range budgets tried in turn when the kernel refuses a filter (ENOMEM: optmem_max).
RANGE_BUDGETS = (bpf.MAX_RANGES, 400, 200, 100, 50, 20, 1)


def _attach(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {u16 len; struct sock_filter *filter}."""
    code = bpf.encode(program)
    buffer = array.array("B", code)   # stays alive until setsockopt has copied it (no ctypes needed)
    fprog = struct.pack("HL", len(program), buffer.buffer_info()[0])
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def _label(family: int, proto: str) -> str:
    return proto + ("6" if family == socket.AF_INET6 else "")


def _loopback_source(src: str) -> bool:
    """127.0.0.0/8, ::1, and their IPv4-mapped form (::ffff:127.x.y.z, however it is written)."""
    if src.startswith("127.") or src == "::1":
        return True
    if not src.startswith("::ffff:"):
        return False
    mapped = ipaddress.IPv6Address(src).ipv4_mapped
    return mapped is not None and mapped.is_loopback


def _stderr_warning(text: str) -> None:
    """Where warnings go when nobody passed ``warn`` (tools and tests, not the daemon)."""
    print(f"portsentry-sensor: warning: {text}", file=sys.stderr)


def _loopback_ifindex() -> int | None:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return None


class RawCapture:
    """Stealth/advanced detection from raw IPv4 and IPv6 sockets with kernel filters."""

    name = "raw"

    @staticmethod
    def is_supported() -> bool:
        """True if this process may open raw sockets (CAP_NET_RAW)."""
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, PROTO_TCP).close()
        except OSError:
            return False
        return True

    def __init__(self, on_probe: Callable[[Probe], None],
                 ports_in_use: Callable[[str, int], bool] | None = None,
                 closed_port: ClosedPortProof | None = None,
                 warn: Callable[[str], None] | None = None) -> None:
        self.on_probe = on_probe
        self.warn = warn or _stderr_warning
        self.ports_in_use = ports_in_use or PortsInUse()
        self.closed_port = closed_port or ClosedPortProof()
        self.released: dict[tuple[str, int], float] = {}
        self.release_grace = RELEASE_GRACE
        self._timer: asyncio.TimerHandle | None = None
        self.plan = PortPlan()
        self.local: frozenset[str] = frozenset()
        self.loopback = _loopback_ifindex()
        self.endpoints: list[_Endpoint] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stats: dict[str, int] = {"packets": 0, "probes": 0, "malformed": 0,
                                      "ignored": 0, "in_use": 0, "replies": 0, "errors": 0, "dropped": 0,
                                      "filter_insns": 0}

    # -- configuration -------------------------------------------------
    def set_plan(self, plan: PortPlan) -> None:
        """Adopt a new plan: open/close sockets and rebuild their filters."""
        self._note_released(plan, time.monotonic())
        self.plan = plan
        if self.loop is not None:
            self._sync_endpoints()

    def _note_released(self, plan: PortPlan, now: float) -> None:
        """Ports a service used in the old plan and the new one watches: a restart, maybe.

        Clients retrying a service that is restarting get RSTs like a scanner
        would; for ``release_grace`` seconds such a port is not reported.
        """
        self.released = {k: t for k, t in self.released.items() if now - t < self.release_grace}
        for skip in self.plan.skipped:
            if skip.reason == SERVICE_SKIP and skip.port in plan.raw_ports(skip.proto):
                self.released[(skip.proto, skip.port)] = now

    def _recently_released(self, proto: str, port: int) -> bool:
        when = self.released.get((proto, port))
        return when is not None and time.monotonic() - when < self.release_grace

    def set_local(self, addresses: Iterable[str]) -> None:
        """This host's addresses; only packets to them count."""
        self.local = frozenset(canonical(a) for a in addresses)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Open the sockets the plan needs, attach filters, start reading."""
        self.loop = loop
        self._sync_endpoints()
        self._rebaseline()

    def _rebaseline(self) -> None:
        """Every ``max_age`` seconds: drop stale closed-port credit (UDP only)."""
        if self.loop is None:
            return
        udp = [e for e in self.endpoints if e.proto == "udp"]
        for endpoint in udp:
            self._readable(endpoint)  # what is queued was counted under the old baseline
        if udp:
            self.closed_port.rebaseline()
        self._timer = self.loop.call_later(self.closed_port.max_age, self._rebaseline)

    def kernel_drops(self, proc: str = "/proc") -> int:
        """Packets the kernel dropped on our full receive queues; also kept in stats["dropped"]."""
        inodes = {os.fstat(e.sock.fileno()).st_ino for e in self.endpoints}
        total = 0
        for name in ("raw", "raw6"):
            try:
                with open(f"{proc}/net/{name}", encoding="ascii") as handle:
                    total += parse_raw_drops(handle.read(), inodes)
            except OSError:
                continue
        self.stats["dropped"] = total
        return total

    def stop(self) -> None:
        """Stop reading and close every socket (stats["dropped"] is updated first)."""
        if self.endpoints:
            self.kernel_drops()
        for endpoint in self.endpoints:
            self._close(endpoint)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.endpoints = []
        self.loop = None

    # -- sockets -------------------------------------------------------
    def _attach_plan(self, endpoint: _Endpoint) -> None:
        """Attach the plan's filter, coarser (never dropping a watched port) if refused."""
        ports = self.plan.raw_ports(endpoint.proto)
        for budget in RANGE_BUDGETS:
            program = bpf.build_filter(endpoint.proto, ports, endpoint.family == socket.AF_INET,
                                       self.loopback, max_ranges=budget)
            try:
                _attach(endpoint.sock, program)
            except OSError as exc:
                if exc.errno != errno.ENOMEM or budget == RANGE_BUDGETS[-1]:
                    raise
                continue
            if budget != RANGE_BUDGETS[0]:
                self.warn(f"kernel filter coarsened to {budget} port ranges (net.core.optmem_max)")
            self.stats["filter_insns"] = max(self.stats["filter_insns"], len(program))
            return

    def _open(self, family: int, proto: str) -> _Endpoint | None:
        try:
            sock = socket.socket(family, socket.SOCK_RAW, _PROTOS[proto])
        except OSError as exc:
            self.warn(f"cannot open raw {_label(family, proto)} socket (CAP_NET_RAW? IPv6 off?): {exc}")
            return None
        endpoint = _Endpoint(sock, family, proto)
        try:
            self._attach_plan(endpoint)  # before any read: nothing unfiltered is parsed
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            self._drain(sock)
        except OSError as exc:
            sock.close()
            self.warn(f"cannot set up raw {_label(family, proto)} socket: {exc}")
            return None
        assert self.loop is not None
        self.loop.add_reader(sock.fileno(), self._readable, endpoint)
        return endpoint

    @staticmethod
    def _drain(sock: socket.socket) -> None:
        """Discard what was queued before the filter was attached."""
        for _ in range(10000):
            try:
                sock.recv(1)
            except (BlockingIOError, InterruptedError):
                return

    def _close(self, endpoint: _Endpoint) -> None:
        if self.loop is not None:
            self.loop.remove_reader(endpoint.sock.fileno())
        endpoint.sock.close()

    def _sync_endpoints(self) -> None:
        self.stats["filter_insns"] = 0
        wanted: set[tuple[int, str]] = {(int(f), p) for p in _PROTOS if self.plan.raw_mode(p)
                  for f in (socket.AF_INET, socket.AF_INET6)}
        kept: list[_Endpoint] = []
        for endpoint in self.endpoints:
            if (endpoint.family, endpoint.proto) in wanted:
                try:
                    self._attach_plan(endpoint)
                except OSError as exc:  # the previous filter stays; Python checks the plan anyway
                    self.warn(f"cannot update the {_label(endpoint.family, endpoint.proto)} filter: {exc}")
                kept.append(endpoint)
                wanted.discard((endpoint.family, endpoint.proto))
            else:
                self._close(endpoint)
        for family, proto in sorted(wanted):
            opened = self._open(family, proto)
            if opened is not None:
                kept.append(opened)
        self.endpoints = kept
        if any(proto == "udp" for _family, proto in wanted):
            self.closed_port.rebaseline()

    # -- packets -------------------------------------------------------
    def _readable(self, endpoint: _Endpoint) -> None:
        for _ in range(BATCH):
            try:
                packet = self._receive(endpoint)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.stats["errors"] += 1
                return
            self.stats["packets"] += 1
            if packet is not None:
                self.handle(packet)

    def _receive(self, endpoint: _Endpoint) -> Packet | None:
        """Read one packet; None (counted as malformed) if it does not parse."""
        try:
            if endpoint.family == socket.AF_INET:
                return parse_ipv4(endpoint.sock.recv(RECV_SIZE))
            data, ancillary, _flags, address = endpoint.sock.recvmsg(RECV_SIZE, _PKTINFO_SPACE)
            return parse_transport(data, _PROTOS[endpoint.proto], canonical(address[0]),
                                   _pktinfo_destination(ancillary))
        except (Malformed, ValueError, IndexError):
            self.stats["malformed"] += 1
            return None

    def probe_for(self, packet: Packet) -> Probe | None:
        """The probe a parsed packet is, or None (not watched, not for us, not a scan)."""
        kind = classify(packet.proto, packet.flags)
        src = packet.src
        if (kind is None or packet.dport not in self.plan.raw_ports(packet.proto)
                or packet.dst not in self.local or src in self.local
                or _loopback_source(src)):
            return None
        return Probe(src=packet.src, dst=packet.dst, proto=packet.proto, dport=packet.dport,
                     scan=kind.scan, mode=self.plan.raw_mode(packet.proto), verified=False,
                     flags=kind.flags)

    def handle(self, packet: Packet) -> None:
        """Turn one parsed packet into a probe callback, or count it as ignored."""
        probe = self.probe_for(packet)
        if probe is None:
            self.stats["ignored"] += 1
            return
        if self.ports_in_use(probe.proto, probe.dport) or (
                self.released and self._recently_released(probe.proto, probe.dport)):
            self.stats["in_use"] += 1
            return
        if probe.proto == "udp" and not self.closed_port(6 if ":" in probe.dst else 4):
            self.stats["replies"] += 1
            return
        self.stats["probes"] += 1
        self.on_probe(probe)


def _pktinfo_destination(ancillary: list[tuple[int, int, bytes]]) -> str:
    """The destination address from an IPV6_PKTINFO control message."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            return ipv6_text(data[:16])
    raise Malformed("no IPV6_PKTINFO destination")
