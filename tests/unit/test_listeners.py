"""sensor/listeners.py: PKTINFO parsing, the loopback guard, and binding on loopback (no privileges)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sensor.listeners import (
    IP_PKTINFO,
    BoundListeners,
    loopback_filter,
    syn_from_loopback,
    udp_arrival,
    udp_destination,
)
from sensor.probe import Probe
from sensor.raw import bpf


def test_udp_destination_from_pktinfo() -> None:
    v4 = (socket.IPPROTO_IP, IP_PKTINFO, b"\x02\0\0\0" + bytes([192, 0, 2, 9]) + bytes([192, 0, 2, 1]))
    assert udp_destination([v4]) == "192.0.2.1"
    v6 = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, "2001:db8::1") + b"\2\0\0\0")
    assert udp_destination([v6]) == "2001:db8::1"
    assert udp_destination([(socket.IPPROTO_IP, IP_PKTINFO, b"\0")]) is None
    assert udp_destination([]) is None
    assert udp_arrival([v4]) == ("192.0.2.1", 2) and udp_arrival([v6]) == ("2001:db8::1", 2)


# SYNs as TCP_SAVE_SYN=2 keeps them (captured on Linux 6.1): link-layer header, IP header, TCP header.
_TCP = bytes.fromhex("9c4b1b59" "00000000" "00000000" "a0027fff" "00000000") + bytes(20)
_IP4 = bytes.fromhex("4500003c000040004006" "0000" "7f000005" "c0000201")
_IP6 = bytes.fromhex("6000000000280640") + bytes(15) + b"\1" + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
OVER_LO_4 = bytes(12) + b"\x08\x00" + _IP4 + _TCP
OVER_LO_6 = bytes(12) + b"\x86\xdd" + _IP6 + _TCP
OVER_ETH_4 = bytes.fromhex("a62861afc0b7" "023fcd83f976" "0800") + _IP4 + _TCP
OVER_ETH_6 = bytes.fromhex("a62861afc0b7" "023fcd83f976" "86dd") + _IP6 + _TCP
OVER_TUN_4 = _IP4 + _TCP   # an IP-only interface: no link-layer header at all


@pytest.mark.parametrize(("saved", "local"), [
    (OVER_LO_4, True), (OVER_LO_6, True), (OVER_ETH_4, False), (OVER_ETH_6, False), (OVER_TUN_4, False),
    (b"", True), (bytes(12), True)])
def test_syn_from_loopback(saved: bytes, local: bool) -> None:
    """lo's link-layer header is all zeros; a missing SYN (SYN cookies) proves nothing and counts as local."""
    assert syn_from_loopback(saved) is local


def test_loopback_filter_drops_only_lo() -> None:
    """The UDP socket filter: interface 1 (lo) dropped in the kernel, any other interface kept whole."""
    program = loopback_filter(1)
    assert bpf.simulate(program, b"datagram", ifindex=1) == 0
    assert bpf.simulate(program, b"datagram", ifindex=2) == 0xFFFFFFFF
    assert bpf.simulate(loopback_filter(7), b"datagram", ifindex=1) == 0xFFFFFFFF


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _scenario(drop_loopback: bool) -> tuple[list[Probe], list[str], int, list[int]]:
    probes: list[Probe] = []
    listeners = BoundListeners(probes.append, banner="go away\n", drop_loopback=drop_loopback)
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("0.0.0.0", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    failures = await listeners.apply((tcp, taken), (udp,))
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp)
    banner = await reader.read(100)
    writer.close()
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", ("::1", udp))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"x", ("127.0.0.1", udp))
    for _ in range(50 if not drop_loopback else 25):
        if len(probes) >= 2:
            break
        await asyncio.sleep(0.02)
    watched = listeners.watched("tcp")
    await listeners.apply((), ())
    left = len(listeners.open)
    listeners.close()
    busy.close()
    return probes, [str(f) for f in failures] + [banner.decode()], left, [*watched, tcp, taken]


def test_bind_connect_udp_and_skip_busy_port() -> None:
    """The listener machinery, with the loopback guard off so that loopback traffic stands in for a probe."""
    probes, texts, left, ports = asyncio.run(_scenario(drop_loopback=False))
    tcp, taken = ports[-2], ports[-1]
    kinds = sorted((p.proto, p.scan, p.verified, p.src, p.dst) for p in probes)
    assert kinds == [("tcp", "connect", True, "127.0.0.1", "127.0.0.1"),
                     ("udp", "udp", False, "127.0.0.1", "127.0.0.1"), ("udp", "udp", False, "::1", "::1")]
    assert f"TCP port {taken} (IPv4) not watched: already in use by another program" in texts
    assert "go away\n" in texts
    assert tcp in ports[:-2] and left == 0


def test_loopback_traffic_is_served_but_never_reported() -> None:
    """Regression (issue 12, item 2): what comes over lo is never a probe (a local user can forge its
    source); the connection still completes and gets the banner.  Before the fix both were reported."""
    probes, texts, left, _ports = asyncio.run(_scenario(drop_loopback=True))
    assert probes == []
    assert "go away\n" in texts
    assert left == 0
