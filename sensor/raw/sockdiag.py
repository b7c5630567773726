"""Listening TCP ports from the kernel's sock_diag netlink interface, without /proc/net/tcp.

Why: reading /proc/net/tcp (or tcp6) walks the whole established-socket hash
table of the host, every network namespace included, even to list the few
sockets of ours: about 6 ms per file on an idle 2-core host, and far more
with thousands of TIME_WAIT sockets after a burst of legitimate connections.
The sensor asks "which ports have a listener?" on the packet path and every
PLAN_REFRESH seconds, so that cost became first-alert latency and CPU time
under load (measured in bench/RESULTS.md).  An inet_diag dump restricted to
the LISTEN state makes the kernel walk only the listening hash
(net/ipv4/inet_diag.c: ``skip_listen_ht`` / ``if (!(idiag_states &
~TCPF_LISTEN)) goto out``): microseconds.  Needs no privilege.  Protocol:
linux/sock_diag.h, linux/inet_diag.h, sock_diag(7).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
_NLMSGHDR = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")      # struct inet_diag_req_v2 (id zeroed)
_MSG_SPORT = struct.Struct("!H")       # inet_diag_msg.id.idiag_sport, big endian
_MSG_SPORT_OFFSET = 4                  # after family, state, timer, retrans
_MAX_MESSAGES = 100_000                # bound on one dump (each socket is one message)


def dump_request(family: int, protocol: int, states: int, seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for one family/protocol and a state mask."""
    body = _REQ.pack(family, protocol, 0, 0, states, b"\0" * 48)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload) of each netlink message in one datagram; stops at a truncated one."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            return
        yield kind, data[offset + _NLMSGHDR.size:offset + length]
        offset += (length + 3) & ~3


def source_port(payload: bytes) -> int | None:
    """The local port of one inet_diag_msg payload (None if too short)."""
    if len(payload) < _MSG_SPORT_OFFSET + 2:
        return None
    return int(_MSG_SPORT.unpack_from(payload, _MSG_SPORT_OFFSET)[0])


def _dump_ports(sock: socket.socket, family: int, protocol: int, states: int) -> set[int]:
    sock.send(dump_request(family, protocol, states))
    ports: set[int] = set()
    for _ in range(_MAX_MESSAGES):
        data = sock.recv(65536)
        if not data:
            raise OSError("sock_diag: empty read")
        for kind, payload in parse_messages(data):
            if kind == NLMSG_DONE:
                return ports
            if kind == NLMSG_ERROR:
                raise OSError("sock_diag: error reply")
            port = source_port(payload)
            if port:
                ports.add(port)
    raise OSError("sock_diag: dump did not end")


def listening_tcp_ports() -> set[int] | None:
    """Ports with a TCP listener (IPv4 or IPv6) in this network namespace; None if unavailable."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(2.0)
            ports: set[int] = set()
            for family in (socket.AF_INET, socket.AF_INET6):
                ports |= _dump_ports(sock, family, socket.IPPROTO_TCP, 1 << TCP_LISTEN)
            return ports
    except (OSError, AttributeError):
        return None
