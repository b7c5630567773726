"""Crafted probes for the benchmarks: SYN/UDP packets with chosen (spoofed) sources.

Why hand-built packets rather than scapy: the spoofed flood needs 100,000+
packets in seconds, and latency samples need the send time of one known
packet.  Packets leave through an AF_PACKET (SOCK_DGRAM) socket opened inside
the attacker namespace (``setns``), addressed to the victim's MAC only, so
nothing can leave the lab.  Forged sources come from 198.18.0.0/15 (RFC 2544,
benchmarking) and 2001:db8::/32 (documentation) only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

CLONE_NEWNET = 0x40000000
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
SPOOF4 = ipaddress.ip_network("198.18.0.0/15")
SPOOF6 = ipaddress.ip_network("2001:db8::/32")
# Spoofed IPv6 sources avoid the lab's on-link 2001:db8::/64 (no neighbour discovery storms).
SPOOF6_BASE = int(ipaddress.ip_address("2001:db8:5000::"))

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def socket_in_netns(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``/run/netns/<netns>`` (the calling thread returns home after)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.socket(family, kind, proto)
        finally:
            _setns(home)
    finally:
        os.close(home)
        os.close(target)


def spoof4(index: int) -> str:
    """The index-th address of 198.18.0.0/15 (skipping .0 network addresses is not needed)."""
    if not 0 <= index < SPOOF4.num_addresses - 2:
        raise ValueError("index outside 198.18.0.0/15")
    return str(SPOOF4.network_address + 1 + index)


def spoof6(index: int) -> str:
    """The index-th spoofed IPv6 source: each in a /64 of its own inside 2001:db8:5000::/36.

    One /64 per source, so a forged flood is a flood of distinct actors: sources of one
    /64 would be one rotating scanner (sensor/prefixwatch.py, IPV6_PREFIX), alerted and
    banned as that /64 (bench/rotation.py measures that case).
    """
    return str(ipaddress.IPv6Address(SPOOF6_BASE + ((index % (1 << 28)) << 64) + 1))


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = int(sum(struct.unpack(f"!{len(data) // 2}H", data)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _transport(proto: int, sport: int, dport: int, seq: int) -> bytes:
    if proto == socket.IPPROTO_TCP:
        return struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 1024, 0, 0)
    return struct.pack("!HHHH", sport, dport, 8 + 4, 0) + b"psb\n"


def _with_checksum(proto: int, segment: bytes, pseudo: bytes) -> bytes:
    csum = _checksum(pseudo + segment)
    if proto == socket.IPPROTO_UDP:
        csum = csum or 0xFFFF
        return segment[:6] + struct.pack("!H", csum) + segment[8:]
    return segment[:16] + struct.pack("!H", csum) + segment[18:]


def packet(src: str, dst: str, dport: int, proto: int = socket.IPPROTO_TCP,
           sport: int = 40000, seq: int = 1) -> tuple[int, bytes]:
    """(ethertype, IP packet): a TCP SYN or a small UDP datagram from ``src`` to ``dst``."""
    segment = _transport(proto, sport, dport, seq)
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, proto, len(segment))
        segment = _with_checksum(proto, segment, pseudo)
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), seq & 0xFFFF, 0x4000,
                             64, proto, 0, s.packed, d.packed)
        header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        return ETH_P_IP, header + segment
    pseudo = s.packed + d.packed + struct.pack("!I3xB", len(segment), proto)
    segment = _with_checksum(proto, segment, pseudo)
    header = struct.pack("!IHBB16s16s", 6 << 28, len(segment), proto, 64, s.packed, d.packed)
    return ETH_P_IPV6, header + segment


class Injector:
    """Sends crafted IP packets from the attacker namespace's eth0 to the victim's MAC."""

    def __init__(self, netns: str | None, victim_mac: str, ifname: str = "eth0") -> None:
        if netns is None:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM)
        else:
            self.sock = socket_in_netns(netns, socket.AF_PACKET, socket.SOCK_DGRAM)
        self.ifname = ifname
        self.mac = bytes.fromhex(victim_mac.replace(":", ""))

    def send(self, ethertype: int, data: bytes) -> None:
        """Send one IP packet (blocking until the kernel took it)."""
        self.sock.sendto(data, (self.ifname, ethertype, 0, 0, self.mac))

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


def flood_packets(count4: int, count6: int, dst4: str, dst6: str,
                  tcp_ports: list[int], udp_ports: list[int], udp_every: int = 4,
                  offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """One probe per spoofed source; every ``udp_every``-th one is UDP.

    Sources are distinct up to 131,070 IPv4 packets (the size of 198.18.0.0/15); a longer
    IPv4 flood starts over at the first address, so those sources repeat, on other ports.
    """
    span4 = SPOOF4.num_addresses - 2
    for family, count, dst in ((4, count4, dst4), (6, count6, dst6)):
        for i in range(count):
            src = spoof4((offset + i) % span4) if family == 4 else spoof6(offset + i)
            if udp_ports and i % udp_every == udp_every - 1:
                yield packet(src, dst, udp_ports[i % len(udp_ports)], socket.IPPROTO_UDP,
                             sport=1024 + i % 60000, seq=i)
            else:
                yield packet(src, dst, tcp_ports[i % len(tcp_ports)], sport=1024 + i % 60000, seq=i)
