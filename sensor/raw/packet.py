"""Packet parsing and scan classification: pure functions over header bytes.

The raw-socket capture (:mod:`sensor.raw.capture`) hands us IPv4 packets with their
header (RFC 791) and, for IPv6, the transport header alone (RFC 3542: an
AF_INET6 raw socket never returns the IPv6 header); :func:`parse_ipv6` also
walks a full IPv6 header chain (RFC 8200) for tests and other backends.
TCP flags follow RFC 793/9293 and RFC 3168 (ECE, CWR).  Every parser either
returns a :class:`Packet` or raises :class:`Malformed`: attacker bytes must
never raise anything else (a hypothesis test holds us to that).

Classification: a segment with ACK belongs to a connection and one with RST
answers something we sent, so neither is a scan probe (the kernel filter in
:mod:`sensor.raw.bpf` drops both).  SYN is ``syn`` (ECN bits allowed: an
ECN-setup SYN is still a SYN), FIN ``fin``, no flags at all ``null``,
FIN+PSH+URG ``xmas``; any other combination is ``unknown`` with its flags
listed; every UDP datagram is ``udp``.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

PROTO_TCP = 6
PROTO_UDP = 17

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
FLAG_NAMES = ((FIN, "FIN"), (SYN, "SYN"), (RST, "RST"), (PSH, "PSH"),
              (ACK, "ACK"), (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))
NOT_A_PROBE = ACK | RST
ECN_BITS = ECE | CWR

# IPv6 extension headers we can step over: hop-by-hop, routing, destination options.
_V6_OPTION_HEADERS = frozenset({0, 43, 60})
_V6_FRAGMENT = 44
_V6_AUTH = 51
_V6_MAX_HEADERS = 8

# Header layouts (network byte order) read in one call each: the hot path.
_IPV4 = struct.Struct("!BxHxxHxBxx4s4s")    # version/IHL, total length, fragment, protocol, src, dst
_TCP = struct.Struct("!HH8xBB")             # ports, data offset, flags
_UDP = struct.Struct("!HH")


def ipv4_text(raw: bytes) -> str:
    """Dotted-quad text of 4 address bytes (inet_ntop: ~10x faster than ipaddress)."""
    return socket.inet_ntop(socket.AF_INET, raw)


@lru_cache(maxsize=4096)
def ipv6_text(raw: bytes) -> str:
    """RFC 5952 text of 16 address bytes, as :mod:`ipaddress` writes it (cached: scans repeat)."""
    return str(ipaddress.IPv6Address(raw))


class Malformed(ValueError):
    """Bytes that are not a parseable IPv4/IPv6 TCP or UDP packet."""


class Packet(NamedTuple):
    """The fields of one inbound TCP segment or UDP datagram that we use."""

    src: str
    dst: str
    proto: str
    sport: int
    dport: int
    flags: int = 0


@dataclass(frozen=True)
class Classified:
    """What kind of scan probe a packet is: ``scan`` and, for unknown, ``flags``."""

    scan: str
    flags: str = ""


_KNOWN = {name: Classified(name) for name in ("syn", "fin", "null", "xmas", "udp")}


def flag_names(flags: int) -> str:
    """TCP flags as ``FIN,URG`` (RFC order), '' for none."""
    return ",".join(name for bit, name in FLAG_NAMES if flags & bit)


def classify(proto: str, flags: int) -> Classified | None:
    """The scan type of a probe, or None for traffic that is not a probe."""
    if proto == "udp":
        return _KNOWN["udp"]
    if proto != "tcp" or flags & NOT_A_PROBE:
        return None
    if flags & ~ECN_BITS == SYN:
        return _KNOWN["syn"]
    if flags == FIN:
        return _KNOWN["fin"]
    if flags == 0:
        return _KNOWN["null"]
    if flags == FIN | PSH | URG:
        return _KNOWN["xmas"]
    return Classified("unknown", flag_names(flags))


def parse_transport(data: bytes, proto: int, src: str, dst: str) -> Packet:
    """A TCP or UDP header starting at ``data[0]``."""
    return parse_transport_at(data, 0, proto, src, dst)


def parse_transport_at(data: bytes, offset: int, proto: int, src: str, dst: str) -> Packet:
    """A TCP or UDP header starting at ``data[offset]``."""
    if proto == PROTO_TCP:
        if len(data) < offset + 20:
            raise Malformed("truncated TCP header")
        sport, dport, data_offset, flags = _TCP.unpack_from(data, offset)
        if data_offset >> 4 < 5:
            raise Malformed("TCP data offset below 5")
        return Packet(src, dst, "tcp", sport, dport, flags)
    if proto == PROTO_UDP:
        if len(data) < offset + 8:
            raise Malformed("truncated UDP header")
        sport, dport = _UDP.unpack_from(data, offset)
        return Packet(src, dst, "udp", sport, dport)
    raise Malformed(f"IP protocol {proto} is neither TCP nor UDP")


def parse_ipv4(data: bytes) -> Packet:
    """An IPv4 packet with its header (what an AF_INET raw socket returns)."""
    if len(data) < 20:
        raise Malformed("not an IPv4 header")
    version_ihl, total, fragment, proto, src, dst = _IPV4.unpack_from(data)
    header = (version_ihl & 0x0F) * 4
    if version_ihl >> 4 != 4 or header < 20 or len(data) < header:
        raise Malformed("bad IPv4 version or header length")
    if fragment & 0x1FFF:
        raise Malformed("IPv4 fragment without transport header")
    if total < header + 8:
        raise Malformed("IPv4 total length too short")
    return parse_transport_at(data, header, proto, ipv4_text(src), ipv4_text(dst))


def _skip_v6_extension(data: bytes, offset: int, kind: int) -> tuple[int, int]:
    """Step over one extension header; return (next header, new offset)."""
    if len(data) < offset + 8:
        raise Malformed("truncated IPv6 extension header")
    following = data[offset]
    if kind == _V6_FRAGMENT:
        if int.from_bytes(data[offset + 2:offset + 4], "big") & 0xFFF8:
            raise Malformed("IPv6 fragment without transport header")
        return following, offset + 8
    if kind == _V6_AUTH:
        return following, offset + (data[offset + 1] + 2) * 4
    return following, offset + (data[offset + 1] + 1) * 8


def parse_ipv6(data: bytes) -> Packet:
    """An IPv6 packet with its header and extension-header chain."""
    if len(data) < 40 or data[0] >> 4 != 6:
        raise Malformed("not an IPv6 header")
    src, dst = ipv6_text(data[8:24]), ipv6_text(data[24:40])
    kind, offset = data[6], 40
    for _ in range(_V6_MAX_HEADERS):
        if kind not in _V6_OPTION_HEADERS and kind not in (_V6_FRAGMENT, _V6_AUTH):
            return parse_transport_at(data, offset, kind, src, dst)
        kind, offset = _skip_v6_extension(data, offset, kind)
    raise Malformed("too many IPv6 extension headers")


def parse_ip(data: bytes) -> Packet:
    """An IPv4 or IPv6 packet, by its version nibble."""
    if data and data[0] >> 4 == 6:
        return parse_ipv6(data)
    return parse_ipv4(data)
