"""Parsing and classification of hand-built IPv4/IPv6 headers (sensor.raw.packet)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.raw.packet import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Classified,
    Malformed,
    Packet,
    classify,
    flag_names,
    parse_ip,
    parse_ipv4,
    parse_ipv6,
    parse_transport,
)

SRC4, DST4 = "198.51.100.7", "192.0.2.1"
SRC6, DST6 = "2001:db8::7", "2001:db8::1"


def tcp(dport: int, flags: int, sport: int = 40000, offset: int = 5) -> bytes:
    """A 20-byte TCP header."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 1024, 0, 0)


def udp(dport: int, sport: int = 40000) -> bytes:
    """An 8-byte UDP header and four bytes of payload."""
    return struct.pack("!HHHH", sport, dport, 12, 0) + b"ping"


def ipv4(payload: bytes, proto: int, src: str = SRC4, dst: str = DST4,
         options: bytes = b"", frag: int = 0) -> bytes:
    """An IPv4 header (with optional options) in front of ``payload``."""
    ihl = 5 + len(options) // 4
    total = ihl * 4 + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return head + options + payload


def ipv6(payload: bytes, proto: int, src: str = SRC6, dst: str = DST6, ext: bytes = b"",
         first: int | None = None) -> bytes:
    """An IPv6 header; ``ext`` extension headers come first, ``first`` names the first one."""
    head = struct.pack("!IHBB16s16s", 0x60000000, len(ext) + len(payload),
                       proto if first is None else first, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return head + ext + payload


SCANS = [
    (SYN, "syn", ""),
    (SYN | ECE | CWR, "syn", ""),
    (FIN, "fin", ""),
    (0, "null", ""),
    (FIN | PSH | URG, "xmas", ""),
    (FIN | URG, "unknown", "FIN,URG"),
    (SYN | FIN, "unknown", "FIN,SYN"),
    (PSH, "unknown", "PSH"),
    (URG | ECE, "unknown", "URG,ECE"),
]


@pytest.mark.parametrize(("flags", "scan", "listed"), SCANS)
def test_every_tcp_scan_type_over_ipv4(flags: int, scan: str, listed: str) -> None:
    packet = parse_ipv4(ipv4(tcp(135, flags), 6))
    assert packet == Packet(SRC4, DST4, "tcp", 40000, 135, flags)
    assert classify(packet.proto, packet.flags) == Classified(scan, listed)


@pytest.mark.parametrize(("flags", "scan", "listed"), SCANS)
def test_every_tcp_scan_type_over_ipv6(flags: int, scan: str, listed: str) -> None:
    packet = parse_ipv6(ipv6(tcp(22, flags), 6))
    assert packet == Packet(SRC6, DST6, "tcp", 40000, 22, flags)
    assert classify(packet.proto, packet.flags) == Classified(scan, listed)


@pytest.mark.parametrize("flags", [ACK, SYN | ACK, FIN | ACK, RST, RST | ACK, PSH | ACK,
                                   FIN | PSH | URG | ACK])
def test_ack_or_rst_is_traffic_not_a_probe(flags: int) -> None:
    assert classify("tcp", flags) is None


def test_udp_over_both_families() -> None:
    four = parse_ipv4(ipv4(udp(53), 17))
    six = parse_ipv6(ipv6(udp(161), 17))
    assert (four.proto, four.dport, six.proto, six.dport) == ("udp", 53, "udp", 161)
    assert classify("udp", 0) == Classified("udp")


def test_ipv4_options_are_skipped() -> None:
    packet = parse_ipv4(ipv4(tcp(80, FIN), 6, options=b"\x01\x01\x01\x00"))
    assert (packet.dport, packet.flags) == (80, FIN)


def test_ipv6_extension_headers_are_walked() -> None:
    hop_by_hop = bytes([60, 0]) + b"\x01\x04\x00\x00\x00\x00"      # -> destination options
    dest_opts = bytes([44, 0]) + b"\x01\x04\x00\x00\x00\x00"       # -> fragment
    fragment = struct.pack("!BBHI", 6, 0, 0x0001, 7)               # first fragment, M=1
    packet = parse_ipv6(ipv6(tcp(443, 0), 6, ext=hop_by_hop + dest_opts + fragment, first=0))
    assert (packet.dport, classify("tcp", packet.flags)) == (443, Classified("null"))


def test_transport_only_as_an_ipv6_raw_socket_returns_it() -> None:
    packet = parse_transport(tcp(8080, FIN | PSH | URG), 6, SRC6, DST6)
    assert classify("tcp", packet.flags) == Classified("xmas")


def test_parse_ip_dispatches_on_version() -> None:
    assert parse_ip(ipv6(udp(1), 17)).src == SRC6
    assert parse_ip(ipv4(udp(1), 17)).src == SRC4


@pytest.mark.parametrize("data", [
    b"",
    ipv4(tcp(80, SYN), 6)[:30],                       # TCP header cut short
    ipv4(udp(53), 17)[:24],                           # UDP header cut short
    ipv4(tcp(80, SYN), 1),                            # ICMP
    ipv4(tcp(80, SYN), 6, frag=0x0010),               # non-first fragment
    b"\x45" + ipv4(tcp(80, SYN), 6)[1:2] + b"\x00\x10" + ipv4(tcp(80, SYN), 6)[4:],  # total length 16
    b"\x41" + ipv4(tcp(80, SYN), 6)[1:],              # IHL 1
    b"\x4f" + ipv4(tcp(80, SYN), 6)[1:],              # IHL 15, header longer than the packet
    ipv4(tcp(80, SYN, offset=2), 6),                  # TCP data offset 2
    ipv4(tcp(80, SYN, offset=4), 6),                  # TCP data offset 4 (one below the minimum)
    ipv4(tcp(80, SYN), 6, frag=0x0001),               # fragment offset 1 (8 bytes in)
    b"\x55" + ipv4(tcp(80, SYN), 6)[1:],              # IP version 5
    ipv6(b"", 0, first=0),                            # a hop-by-hop header announced, none there
    ipv6(tcp(80, SYN), 6)[:50],
    ipv6(b"", 59),                                    # no next header
    ipv6(struct.pack("!BBHI", 6, 0, 0x0100, 7) + tcp(80, SYN), 6, first=44),  # later fragment
    ipv6(b"\x00\x00" * 40, 0, first=0),               # a chain of hop-by-hop headers
    ipv6(tcp(80, SYN), 6)[:39],
])
def test_malformed_packets_raise_malformed_only(data: bytes) -> None:
    with pytest.raises(Malformed):
        parse_ip(data)


def test_flag_names_in_rfc_order() -> None:
    assert flag_names(0xFF) == "FIN,SYN,RST,PSH,ACK,URG,ECE,CWR"
    assert flag_names(0) == ""


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=120))
def test_garbage_never_raises_anything_but_malformed(data: bytes) -> None:
    for parse in (parse_ip, parse_ipv4, parse_ipv6):
        try:
            packet = parse(data)
        except Malformed:
            continue
        assert packet.proto in ("tcp", "udp") and 0 <= packet.dport <= 65535


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([4, 6]), st.integers(0, 15), st.binary(max_size=80))
def test_garbage_behind_a_plausible_header_never_raises(version: int, ihl: int, rest: bytes) -> None:
    data = bytes([version << 4 | ihl]) + rest
    try:
        packet = parse_ip(data)
    except Malformed:
        return
    assert classify(packet.proto, packet.flags) is None or packet.dport >= 0


@settings(deadline=None)
@given(st.integers(0, 255))
def test_classification_is_total_over_all_flag_bytes(flags: int) -> None:
    kind = classify("tcp", flags)
    if flags & (ACK | RST):
        assert kind is None
    else:
        assert kind is not None and kind.scan in ("syn", "fin", "null", "xmas", "unknown")
        assert (kind.scan == "unknown") == bool(kind.flags)


def test_headers_at_exactly_their_minimum_length_and_one_byte_short() -> None:
    assert parse_transport(tcp(80, SYN), 6, SRC4, DST4).dport == 80               # 20-byte TCP header
    with pytest.raises(Malformed):
        parse_transport(tcp(80, SYN)[:19], 6, SRC4, DST4)
    header = udp(53)[:8]                                                           # 8-byte UDP header
    assert parse_transport(header, 17, SRC4, DST4) == Packet(SRC4, DST4, "udp", 40000, 53)
    with pytest.raises(Malformed):
        parse_transport(header[:7], 17, SRC4, DST4)
    packet = ipv4(header, 17)                                                      # total length 28
    assert parse_ipv4(packet).dport == 53
    with pytest.raises(Malformed):                                                 # total length 27
        parse_ipv4(packet[:2] + struct.pack("!H", 27) + packet[4:])


def test_udp_carries_no_flags_and_only_tcp_or_udp_is_classified() -> None:
    assert parse_ipv4(ipv4(udp(53), 17)).flags == 0
    assert classify("icmp", 0) is None and classify("sctp", SYN) is None


def test_routing_and_longer_option_headers_are_stepped_over_by_their_length() -> None:
    routing = bytes([60, 1, 0, 0]) + bytes(12)                  # 16 bytes (length 1) -> destination options
    dest_opts = bytes([6, 2, 1, 20]) + bytes(20)                # 24 bytes (length 2) -> TCP
    packet = parse_ipv6(ipv6(tcp(993, SYN, sport=51000), 6, ext=routing + dest_opts, first=43))
    assert (packet.sport, packet.dport, packet.flags) == (51000, 993, SYN)


def test_an_authentication_header_is_stepped_over_by_its_own_length_unit() -> None:
    """AH counts its length in 4-byte words minus 2 (RFC 4302), not in 8-byte units."""
    auth = bytes([6, 4, 0, 0]) + bytes(20)                      # (4 + 2) * 4 = 24 bytes -> TCP
    packet = parse_ipv6(ipv6(tcp(25, FIN, sport=52000), 6, ext=auth, first=51))
    assert (packet.sport, packet.dport, packet.flags) == (52000, 25, FIN)


def test_up_to_seven_extension_headers_are_walked_and_eight_are_refused() -> None:
    def chain(count: int) -> bytes:
        return b"".join(bytes([60 if i < count - 1 else 6, 0]) + bytes(6) for i in range(count))
    assert parse_ipv6(ipv6(tcp(80, SYN), 6, ext=chain(7), first=60)).dport == 80
    with pytest.raises(Malformed):
        parse_ipv6(ipv6(tcp(80, SYN), 6, ext=chain(8), first=60))


def test_each_family_parser_checks_the_version_nibble() -> None:
    six = ipv6(tcp(80, SYN), 6)
    with pytest.raises(Malformed):
        parse_ipv6(b"\x40" + six[1:])             # an IPv6 layout that says version 4
    with pytest.raises(Malformed):
        parse_ipv4(b"\x65" + ipv4(tcp(80, SYN), 6)[1:])
