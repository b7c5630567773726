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

A classic BPF program (:mod:`sensor.bpf`) is attached to each socket so that
established traffic and packets to real services never wake Python up; it is
rebuilt on every :meth:`RawCapture.set_plan`.  Before a probe is reported the
port is checked against the live socket tables (:class:`PortsInUse`), which
closes the gap between a service starting and the next plan refresh.
Needs CAP_NET_RAW.  Malformed packets are counted and dropped, never raised.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from sensor import bpf
from sensor.detector import Probe
from sensor.packet import (
    PROTO_TCP,
    PROTO_UDP,
    Malformed,
    Packet,
    classify,
    ipv6_text,
    parse_ipv4,
    parse_transport,
)
from sensor.portplan import TCP_LISTEN, PortPlan
from sensor.sockdiag import listening_tcp_ports

log = logging.getLogger(__name__)

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
BATCH = 256                 # packets read per wake-up before yielding to the loop
RCVBUF = 4 << 20            # asked for; the kernel caps it at net.core.rmem_max
RELEASE_GRACE = 10.0        # seconds a port a service just gave up stays unreported
SERVICE_SKIP = "a service listens"   # sensor.portplan's reason for a busy port
RECV_SIZE = bpf.SNAPLEN
_PKTINFO_SPACE = socket.CMSG_SPACE(20)  # struct in6_pktinfo
_PROTOS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}


@lru_cache(maxsize=4096)
def _norm(address: str) -> str:
    """Canonical text of an address (scope ids and IPv4-mapped forms removed)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def parse_socket_ports(text: str, state: str | None = None) -> set[int]:
    """Local ports in a /proc/net/{tcp,udp}[6] table: every socket, or those in ``state``."""
    ports: set[int] = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 4)
        if len(parts) < 4 or ":" not in parts[1] or (state and parts[3] != state):
            continue
        try:
            ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def parse_raw_drops(text: str, inodes: set[int]) -> int:
    """Sum of the ``drops`` column of /proc/net/raw[6] rows whose inode is in ``inodes``."""
    total = 0
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 13 and parts[9].isdigit() and int(parts[9]) in inodes and parts[12].isdigit():
            total += int(parts[12])
    return total


class PortsInUse:
    """Live view of ports real services use: TCP LISTEN, UDP any socket.

    TCP counts listeners only: a SYN to a port with no listener is a probe even
    if a TIME_WAIT or outgoing connection uses that port number.  UDP counts
    every socket, connected ones included: a DNS reply to a resolver's
    ephemeral port is not a UDP scan, though the plan (unconnected sockets
    only, refreshed every PLAN_REFRESH) may list that port as watched.

    The minimum interval between re-reads is ten times the last read's cost
    (at least ``min_interval``), so a scan burst costs at most ~10% CPU in
    table reads even on a host with very many sockets.
    """

    def __init__(self, proc: str = "/proc", min_interval: float = 0.02) -> None:
        self.proc = proc
        self.min_interval = min_interval
        self._ports: dict[str, set[int]] = {}
        self._read_at: dict[str, float] = {}
        self._interval: dict[str, float] = {}
        self.reads = 0

    def _refresh(self, proto: str, now: float) -> None:
        fast = listening_tcp_ports() if proto == "tcp" and self.proc == "/proc" else None
        ports: set[int] = fast if fast is not None else set()
        for name in (proto, f"{proto}6") if fast is None else ():
            try:
                with open(f"{self.proc}/net/{name}", encoding="ascii") as handle:
                    ports |= parse_socket_ports(handle.read(), TCP_LISTEN if proto == "tcp" else None)
            except OSError:
                continue
        cost = time.monotonic() - now
        self._ports[proto] = ports
        self._read_at[proto] = now
        self._interval[proto] = max(self.min_interval, 10 * cost)
        self.reads += 1

    def __call__(self, proto: str, port: int) -> bool:
        """True if some local socket of ``proto`` uses ``port`` right now."""
        now = time.monotonic()
        if now - self._read_at.get(proto, -1e9) >= self._interval.get(proto, 0.0):
            self._refresh(proto, now)
        return port in self._ports.get(proto, set())


def parse_noports(text: str, version: int) -> int | None:
    """UDP NoPorts from /proc/net/snmp (``Udp:`` table, IPv4) or /proc/net/snmp6 (Udp6NoPorts)."""
    lines = text.splitlines()
    if version == 6:
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[0] == "Udp6NoPorts" and parts[1].isdigit():
                return int(parts[1])
        return None
    rows = [line.split() for line in lines if line.startswith("Udp: ")]
    if len(rows) < 2 or "NoPorts" not in rows[0] or len(rows[1]) != len(rows[0]):
        return None
    value = rows[1][rows[0].index("NoPorts")]
    return int(value) if value.isdigit() else None


class ClosedPortProof:
    """Did a UDP datagram really hit a closed port?  The kernel's NoPorts counters say.

    A reply to one of our own UDP clients (a resolver's query, an NTP poll) is
    addressed to an ephemeral port that may be watched in audp mode, and its
    socket may already be closed when we look (the client got its answer).
    The kernel delivers a datagram to raw sockets and then to UDP in the same
    softirq, counting udpNoPorts (RFC 4113) when no socket takes it, so by the
    time we read a datagram the counter already says whether it was refused.
    Each increment is credit for one report; credit older than ``max_age``
    (noise from unwatched ports) is discarded by re-reading the baseline on a
    timer.  Counters unreadable: every datagram counts (the previous behaviour).
    """

    def __init__(self, proc: str = "/proc", max_age: float = 1.0) -> None:
        self.proc = proc
        self.max_age = max_age
        self.baseline: dict[int, int | None] = {4: None, 6: None}
        self.credit: dict[int, int] = {4: 0, 6: 0}

    def read(self, version: int) -> int | None:
        """The current NoPorts counter of one IP version, or None."""
        name = "snmp6" if version == 6 else "snmp"
        try:
            with open(f"{self.proc}/net/{name}", encoding="ascii") as handle:
                return parse_noports(handle.read(), version)
        except OSError:
            return None

    def rebaseline(self) -> None:
        """Forget old credit: datagrams refused so far are not ours to report."""
        for version in (4, 6):
            self.baseline[version] = self.read(version)
            self.credit[version] = 0

    def __call__(self, version: int) -> bool:
        """True if one more datagram of this IP version is proven to have hit a closed port."""
        if self.credit[version] == 0:
            now = self.read(version)
            before = self.baseline[version]
            if now is None or before is None:
                self.baseline[version] = now
                return True
            self.credit[version] += max(0, now - before)
            self.baseline[version] = now
        if self.credit[version] == 0:
            return False
        self.credit[version] -= 1
        return True


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
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


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
                 closed_port: ClosedPortProof | None = None) -> None:
        self.on_probe = on_probe
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
        self.local = frozenset(_norm(a) for a in addresses)

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
                log.warning("kernel filter coarsened to %d port ranges (net.core.optmem_max)", budget)
            self.stats["filter_insns"] = max(self.stats["filter_insns"], len(program))
            return

    def _open(self, family: int, proto: str) -> _Endpoint | None:
        try:
            sock = socket.socket(family, socket.SOCK_RAW, _PROTOS[proto])
        except OSError as exc:
            log.warning("cannot open raw %s socket (%s): %s",
                        proto + ("6" if family == socket.AF_INET6 else ""), "CAP_NET_RAW?", exc)
            return None
        endpoint = _Endpoint(sock, family, proto)
        try:
            self._attach_plan(endpoint)  # before any read: nothing unfiltered is parsed
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            self._drain(sock)
        except OSError:
            sock.close()
            raise
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
                self._attach_plan(endpoint)
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
            return parse_transport(data, _PROTOS[endpoint.proto], _norm(address[0]),
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
                or src.startswith("127.") or src == "::1"):
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
