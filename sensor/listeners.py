"""Bound-socket tripwires: the ``tcp`` and ``udp`` modes.

Each watched port is bound on IPv4 and IPv6 (separate sockets, IPV6_V6ONLY).
A completed TCP handshake is a ``connect`` probe whose source is proven
(``verified=yes``); a UDP datagram is a ``udp`` probe (spoofable).  The UDP
destination address comes from IP_PKTINFO / IPV6_PKTINFO (ip(7), ipv6(7)).
A port that cannot be bound is skipped and reported (once per port when both
families fail alike); the caller decides whether what is left is enough.
Binding stops FD_RESERVE descriptors short of RLIMIT_NOFILE, so that accept(),
the journal socket and the file watch still work under a low ``ulimit -n``
(getrlimit(2)); lowest ports are bound first, both families together
(:func:`allocate` computes the same split in advance, for ``check``).  What the
limit leaves out is marked (``BindFailure.limit``) so that it is reported in one
line (:func:`limit_summary`) and not retried until the next reload.

Nothing that arrives over the loopback interface is reported: it comes from
this host, and a local user without privileges can give it any source address
(a socket bound with IPV6_FREEBIND and sent to ``::1`` or to one of the host's
own addresses, which the kernel routes over ``lo`` too; a TCP handshake also
completes from an address the kernel delivers locally, such as a router's
subnet anycast address).  The interface is checked, not the destination
address: IP_PKTINFO/IPV6_PKTINFO name the interface of the destination address
(eth0) for a datagram that came over ``lo``.  UDP sockets carry a classic BPF
filter that drops datagrams from ``lo`` in the kernel (``SKF_AD_IFINDEX``, the
device the packet came in on); TCP listeners keep each SYN with its link-layer
header (``TCP_SAVE_SYN`` = 2, Linux 5.10, tcp(7)) and a connection whose SYN
carries the loopback device's all-zero addresses is served but not reported.
A connection without a saved SYN (SYN cookies) proves nothing and is not
reported either.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import os
import resource
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sensor.addr import canonical
from sensor.portspec import format_ports
from sensor.probe import Probe
from sensor.raw import bpf

IP_PKTINFO = 8  # linux/in.h; not exported by Python's socket module
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
TCP_SAVE_SYN, TCP_SAVED_SYN = 27, 28  # linux/tcp.h
SAVE_SYN_WITH_LINK_HEADER = 2  # the saved SYN starts with its link-layer (MAC) header
LOOPBACK_IFINDEX = 1  # linux/netdevice.h: "lo" in every network namespace
ETHER_HEADER = 14
FAMILIES = ((socket.AF_INET, "0.0.0.0", "IPv4"), (socket.AF_INET6, "::", "IPv6"))

FD_RESERVE = 20  # descriptors left free: accept(), journal, syslog, inotify, raw capture, resolver

OnProbe = Callable[[Probe], None]


@dataclass(frozen=True)
class BindFailure:
    """A port the sensor could not bind, and why (``limit``: the file-descriptor limit)."""

    proto: str
    port: int
    family: str
    reason: str
    limit: bool = False

    def __str__(self) -> str:
        return f"{self.proto.upper()} port {self.port} ({self.family}) not watched: {self.reason}"


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "already in use by another program"
    if exc.errno == errno.EACCES:
        return "permission denied (needs CAP_NET_BIND_SERVICE below 1024)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "address family not available"
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return "too many open files (raise LimitNOFILE= / ulimit -n)"
    return exc.strerror or str(exc)


def _family_name(family: int) -> str:
    return next(n for f, _, n in FAMILIES if f == family)


def fd_budget(reserve: int = FD_RESERVE, fd_dir: str = "/proc/self/fd",
              hard: bool = False) -> tuple[int, int] | None:
    """(sockets that may still be opened, soft RLIMIT_NOFILE); None if unlimited or unknown.

    ``hard``: use the hard limit, which ``run`` raises the soft one to (for ``check``).
    """
    soft, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard:
        soft = hard_limit
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir(fd_dir))
    except OSError:
        return None
    return soft - used - reserve, soft


def merge_families(failures: list[BindFailure]) -> list[BindFailure]:
    """One failure per port and reason ('IPv4, IPv6' when both families failed alike)."""
    merged: dict[tuple[str, int, str], BindFailure] = {}
    for failure in failures:
        key = (failure.proto, failure.port, failure.reason)
        seen = merged.get(key)
        merged[key] = failure if seen is None else BindFailure(
            failure.proto, failure.port, f"{seen.family}, {failure.family}", failure.reason, failure.limit)
    return sorted(merged.values(), key=lambda f: (f.port, f.proto, f.family))


PER_PORT_LINES = 10  # more failures than this for one reason and protocol: one line for all of them


def failure_lines(failures: list[BindFailure]) -> list[str]:
    """Warning texts: one per port, or one per reason and protocol when there are many ports."""
    groups: dict[tuple[str, str], list[BindFailure]] = {}
    for failure in failures:
        groups.setdefault((failure.proto, failure.reason), []).append(failure)
    lines: list[str] = []
    for (proto, reason), group in groups.items():
        if len(group) <= PER_PORT_LINES:
            lines += [str(f) for f in group]
            continue
        families = ", ".join(name for _, _, name in FAMILIES if any(name in f.family for f in group))
        lines.append(f"{proto.upper()} ports {format_ports([f.port for f in group])} ({families}) "
                     f"not watched: {reason}")
    return lines


def _order(key: tuple[str, int, int]) -> tuple[int, str, int]:
    return key[2], key[0], key[1]  # lowest port first, TCP before UDP, IPv4 before IPv6


def allocate(tcp: Iterable[int], udp: Iterable[int], room: int | None) -> tuple[dict[str, list[int]], int]:
    """Ports the descriptor limit leaves out when ``room`` sockets may be opened (None: no limit).

    The same order as :meth:`BoundListeners.apply`; returns ({proto: ports with a family left
    out}, sockets left out).
    """
    keys = sorted(((proto, int(fam), port) for proto, ports in (("tcp", tcp), ("udp", udp))
                   for port in ports for fam, _, _ in FAMILIES), key=_order)
    starved = keys[max(room, 0):] if room is not None else []
    left_out: dict[str, list[int]] = {}
    for proto, _fam, port in starved:
        ports = left_out.setdefault(proto, [])
        if not ports or ports[-1] != port:
            ports.append(port)
    return left_out, len(starved)


def limit_summary(left_out: dict[str, list[int]], missing: int, soft: int, fitted: int) -> str:
    """One line for everything the descriptor limit leaves out: which ports, why, what to raise."""
    named = ", ".join(f"{proto.upper()} {'port' if len(ports) == 1 else 'ports'} {format_ports(ports)}"
                      for proto, ports in sorted(left_out.items()) if ports)
    return (f"{named} not watched: the file-descriptor limit (ulimit -n {soft}, {FD_RESERVE} kept free) "
            f"allows {fitted} tripwire sockets, {missing} more are needed (one per port and family): "
            f"raise LimitNOFILE= to at least {soft + missing}")


def loopback_ifindex() -> int:
    """The interface index of ``lo`` (1 unless this kernel says otherwise)."""
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return LOOPBACK_IFINDEX


def loopback_filter(ifindex: int) -> list[bpf.Insn]:
    """A socket filter: drop what came in on interface ``ifindex``, keep the rest whole."""
    return [bpf.Insn(bpf.LD | bpf.W | bpf.ABS, k=bpf.ANCILLARY_IFINDEX),
            bpf.Insn(bpf.JMP | bpf.JEQ | bpf.K, 0, 1, ifindex),
            bpf.Insn(bpf.RET | bpf.K, k=0),
            bpf.Insn(bpf.RET | bpf.K, k=0xFFFFFFFF)]


def attach_filter(sock: socket.socket, program: list[bpf.Insn]) -> None:
    """SO_ATTACH_FILTER: struct sock_fprog {u16 len; struct sock_filter *filter}."""
    buffer = array.array("B", bpf.encode(program))  # alive until setsockopt has copied it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(program), buffer.buffer_info()[0]))


def syn_from_loopback(saved_syn: bytes) -> bool:
    """Whether a SYN saved with TCP_SAVE_SYN=2 may have come in over ``lo``.

    ``lo``'s link-layer header has all-zero addresses; a frame from a real
    Ethernet-like interface carries this host's own (never zero) address, and an
    IP-only interface (tun, WireGuard) has no link-layer header, so the saved bytes
    start with the IP version.  No saved SYN at all (SYN cookies) proves nothing: True.
    """
    if len(saved_syn) < ETHER_HEADER + 20:
        return True
    return saved_syn[:12] == bytes(12)


def _bind(family: int, kind: int, host: str, port: int, drop_loopback: bool = True) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            if drop_loopback:
                try:
                    attach_filter(sock, loopback_filter(loopback_ifindex()))
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot attach the loopback filter: {exc.strerror}") from None
        elif drop_loopback:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_SAVE_SYN, SAVE_SYN_WITH_LINK_HEADER)
            except OSError as exc:
                raise OSError(exc.errno, "this kernel cannot tell loopback connections apart "
                                         "(TCP_SAVE_SYN=2 needs Linux 5.10)") from None
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class _TcpTripwire(asyncio.Protocol):
    """Reports a completed connection (not one over ``lo``), optionally sends the banner, hangs up."""

    def __init__(self, port: int, banner: bytes, on_probe: OnProbe, drop_loopback: bool = True) -> None:
        self.port, self.banner, self.on_probe = port, banner, on_probe
        self.drop_loopback = drop_loopback

    def _from_loopback(self, transport: asyncio.Transport) -> bool:
        sock = transport.get_extra_info("socket")
        try:
            saved = sock.getsockopt(socket.IPPROTO_TCP, TCP_SAVED_SYN, 512)
        except (OSError, AttributeError):
            saved = b""
        return syn_from_loopback(saved)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        try:
            src = canonical(transport.get_extra_info("peername")[0])
            dst = canonical(transport.get_extra_info("sockname")[0])
        except (TypeError, ValueError, IndexError):
            transport.abort()
            return
        local = self.drop_loopback and self._from_loopback(transport)
        if self.banner:
            transport.write(self.banner)
        transport.close()
        if not local:
            self.on_probe(Probe(src, dst, "tcp", self.port, "connect", "tcp", True))


def udp_arrival(ancillary: list[tuple[int, int, bytes]]) -> tuple[str, int] | None:
    """(destination address, interface index) from IP_PKTINFO / IPV6_PKTINFO data."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            return socket.inet_ntop(socket.AF_INET, data[8:12]), struct.unpack("=i", data[:4])[0]
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 20:
            return canonical(socket.inet_ntop(socket.AF_INET6, data[:16])), struct.unpack("=i", data[16:20])[0]
    return None


def udp_destination(ancillary: list[tuple[int, int, bytes]]) -> str | None:
    """The datagram's destination address from IP_PKTINFO / IPV6_PKTINFO data."""
    arrival = udp_arrival(ancillary)
    return arrival[0] if arrival else None


class BoundListeners:
    """The set of bound tripwire sockets; :meth:`apply` moves it to a new plan."""

    def __init__(self, on_probe: OnProbe, banner: str = "", drop_loopback: bool = True) -> None:
        self.on_probe = on_probe
        self.drop_loopback = drop_loopback  # False only in tests that need loopback traffic reported
        self.loopback = loopback_ifindex()
        self.banner = banner.encode("utf-8", "replace")
        self.open: dict[tuple[str, int, int], socket.socket] = {}
        self.limit: int | None = None  # the soft RLIMIT_NOFILE at the last apply() (None: unlimited)
        self.servers: dict[tuple[str, int, int], asyncio.AbstractServer] = {}

    def watched(self, proto: str) -> list[int]:
        """Ports bound on at least one family."""
        return sorted({port for (p, _, port) in self.open if p == proto})

    async def apply(self, tcp: tuple[int, ...], udp: tuple[int, ...],
                    banner: str | None = None) -> list[BindFailure]:
        """Bind what is new, close what is gone; return what could not be bound."""
        if banner is not None:
            self.banner = banner.encode("utf-8", "replace")
        wanted: set[tuple[str, int, int]] = {
            (proto, int(fam), port) for proto, ports in (("tcp", tcp), ("udp", udp))
            for port in ports for fam, _, _ in FAMILIES}
        for key in [k for k in self.open if k not in wanted]:
            self._close(key)
        failures: list[BindFailure] = []
        budget = fd_budget()
        self.limit = budget[1] if budget is not None else None
        todo = sorted(wanted - set(self.open), key=_order)
        for index, key in enumerate(todo):
            if budget is not None and budget[0] <= 0:
                reason = f"file-descriptor limit reached (ulimit -n {budget[1]}, {FD_RESERVE} kept free)"
                failures += [BindFailure(proto, port, _family_name(fam), reason, True)
                             for proto, fam, port in todo[index:]]
                break
            failure = await self._open(*key)
            if failure:
                failures.append(failure)
            elif budget is not None:
                budget = (budget[0] - 1, budget[1])
        return merge_families(failures)

    async def _open(self, proto: str, family: int, port: int) -> BindFailure | None:
        host, name = next((h, n) for f, h, n in FAMILIES if f == family)
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        try:
            sock = _bind(family, kind, host, port, self.drop_loopback)
        except OSError as exc:
            return BindFailure(proto, port, name, _reason(exc), exc.errno in (errno.EMFILE, errno.ENFILE))
        loop = asyncio.get_running_loop()
        if proto == "tcp":
            server = await loop.create_server(
                lambda: _TcpTripwire(port, self.banner, self.on_probe, self.drop_loopback), sock=sock)
            self.servers[(proto, family, port)] = server
        else:
            loop.add_reader(sock.fileno(), self._udp_ready, sock, port)
        self.open[(proto, family, port)] = sock
        return None

    def _udp_ready(self, sock: socket.socket, port: int) -> None:
        for _ in range(64):  # bounded batch per wake-up
            try:
                data, ancillary, _flags, peer = sock.recvmsg(0, 256)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            arrival = udp_arrival(ancillary)
            try:
                src = canonical(peer[0])
            except (ValueError, IndexError, TypeError):
                continue
            if arrival is None or (self.drop_loopback and arrival[1] == self.loopback):
                continue  # the kernel filter already drops what comes over lo: this is a second guard
            self.on_probe(Probe(src, arrival[0], "udp", port, "udp", "udp", False))
            del data

    def _close(self, key: tuple[str, int, int]) -> None:
        sock = self.open.pop(key)
        server = self.servers.pop(key, None)
        if server is not None:
            server.close()
        else:
            with contextlib.suppress(RuntimeError, ValueError):
                asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()

    def close(self) -> None:
        """Close every socket."""
        for key in list(self.open):
            self._close(key)
