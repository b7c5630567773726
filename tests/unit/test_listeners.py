"""sensor/listeners.py: PKTINFO parsing and binding on loopback (no privileges)."""

from __future__ import annotations

import asyncio
import socket

from sensor.detector import Probe
from sensor.listeners import IP_PKTINFO, BoundListeners, udp_destination


def test_udp_destination_from_pktinfo() -> None:
    v4 = (socket.IPPROTO_IP, IP_PKTINFO, b"\x02\0\0\0" + bytes([192, 0, 2, 9]) + bytes([192, 0, 2, 1]))
    assert udp_destination([v4]) == "192.0.2.1"
    v6 = (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, socket.inet_pton(socket.AF_INET6, "2001:db8::1") + b"\2\0\0\0")
    assert udp_destination([v6]) == "2001:db8::1"
    assert udp_destination([(socket.IPPROTO_IP, IP_PKTINFO, b"\0")]) is None
    assert udp_destination([]) is None


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _scenario() -> tuple[list[Probe], list[str], int, list[int]]:
    probes: list[Probe] = []
    listeners = BoundListeners(probes.append, banner="go away\n")
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
    for _ in range(50):
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
    probes, texts, left, ports = asyncio.run(_scenario())
    tcp, taken = ports[-2], ports[-1]
    kinds = sorted((p.proto, p.scan, p.verified, p.src, p.dst) for p in probes)
    assert kinds == [("tcp", "connect", True, "127.0.0.1", "127.0.0.1"), ("udp", "udp", False, "::1", "::1")]
    assert f"TCP port {taken} (IPv4) not watched: already in use by another program" in texts
    assert "go away\n" in texts
    assert tcp in ports[:-2] and left == 0
