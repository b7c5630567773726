"""The raw-socket backend (sensor.raw.capture): decisions, reading, socket lifecycle.

Decisions and reading are tested with fake sockets; the lifecycle test opens
real raw sockets (needs CAP_NET_RAW) but never sends anything.  The kernel
filter's verdicts are tested in tests/unit/test_bpf.py and the whole path with
nmap in tests/e2e/test_stealth.py.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from ci import skip_or_fail
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.config import Config
from sensor.portplan import PortPlan, Skip, build_plan
from sensor.probe import Probe
from sensor.raw.capture import (
    SERVICE_SKIP,
    ClosedPortProof,
    RawCapture,
    _Endpoint,
    _pktinfo_destination,
    parse_raw_drops,
)
from sensor.raw.packet import ACK, FIN, PSH, SYN, URG, Packet

PLAN = PortPlan(tcp_raw=frozenset(range(1, 1025)) - {22}, udp_raw=frozenset({161}),
                tcp_raw_mode="atcp", udp_raw_mode="sudp")
LOCAL = ("192.0.2.1", "2001:db8::1", "127.0.0.1", "::1")


def capture(in_use: set[int] | None = None) -> tuple[RawCapture, list[Probe]]:
    """A capture with PLAN and LOCAL, collecting probes; ``in_use`` ports are live services."""
    probes: list[Probe] = []
    busy = in_use or set()
    raw = RawCapture(probes.append, ports_in_use=lambda proto, port: port in busy,
                     closed_port=ClosedPortProof(proc="/nonexistent"))  # no counters: all count
    raw.set_plan(PLAN)
    raw.set_local(LOCAL)
    return raw, probes


def test_a_syn_to_a_watched_port_is_one_unverified_probe() -> None:
    raw, probes = capture()
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 135, SYN))
    assert probes == [Probe("198.51.100.7", "192.0.2.1", "tcp", 135, "syn", "atcp", False, "")]
    assert raw.stats["probes"] == 1


def test_unknown_flag_combinations_carry_their_flags() -> None:
    raw, probes = capture()
    raw.handle(Packet("2001:db8::7", "2001:db8::1", "tcp", 40000, 1000, FIN | URG))
    raw.handle(Packet("2001:db8::7", "2001:db8::1", "tcp", 40000, 1001, FIN | PSH | URG))
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "udp", 40000, 161))
    assert [(p.scan, p.flags, p.mode) for p in probes] == [
        ("unknown", "FIN,URG", "atcp"), ("xmas", "", "atcp"), ("udp", "", "sudp")]


@pytest.mark.parametrize("packet", [
    Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 22, SYN),           # a real service
    Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 2000, SYN),         # above the bound
    Packet("198.51.100.7", "192.0.2.1", "udp", 40000, 53),                # UDP not watched
    Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 135, SYN | ACK),    # established traffic
    Packet("198.51.100.7", "192.0.2.255", "tcp", 40000, 135, SYN),        # not one of our addresses
    Packet("127.0.0.1", "127.0.0.1", "tcp", 40000, 135, SYN),             # loopback
    Packet("::1", "2001:db8::1", "tcp", 40000, 135, SYN),
    Packet("127.0.0.2", "192.0.2.1", "tcp", 40000, 135, SYN),             # loopback, not in LOCAL
    Packet("::ffff:127.0.0.1", "2001:db8::1", "tcp", 40000, 135, SYN),    # IPv4-mapped loopback
    Packet("::ffff:7f00:2", "2001:db8::1", "tcp", 40000, 135, SYN),       # (as Python 3.11 writes it)
    Packet("192.0.2.1", "192.0.2.1", "tcp", 40000, 135, SYN),             # ourselves
])
def test_packets_that_are_not_probes_are_ignored(packet: Packet) -> None:
    raw, probes = capture()
    raw.handle(packet)
    assert probes == [] and raw.stats["ignored"] == 1


def test_a_port_that_a_service_took_since_the_plan_is_not_reported() -> None:
    raw, probes = capture(in_use={880})
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 880, SYN))
    assert probes == [] and raw.stats["in_use"] == 1


def test_pktinfo_gives_the_ipv6_destination() -> None:
    info = socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("I", 2)
    assert _pktinfo_destination([(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)]) == "2001:db8::1"
    with pytest.raises(ValueError):
        _pktinfo_destination([])


class FakeSocket:
    """Returns queued datagrams, then EAGAIN."""

    def __init__(self, datagrams: list[bytes], v6_source: str = "2001:db8::7") -> None:
        self.datagrams = datagrams
        self.v6_source = v6_source

    def recv(self, size: int) -> bytes:
        if not self.datagrams:
            raise BlockingIOError
        return self.datagrams.pop(0)[:size]

    def recvmsg(self, size: int, ancsize: int) -> tuple[bytes, list[tuple[int, int, bytes]], int, tuple[str, int]]:
        data = self.recv(size)
        info = socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack("I", 2)
        return data, [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0, (self.v6_source, 0)


def tcp_header(dport: int, flags: int) -> bytes:
    """A 20-byte TCP header."""
    return struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, flags, 1024, 0, 0)


def ipv4_tcp(dport: int, flags: int) -> bytes:
    """IPv4 198.51.100.7 -> 192.0.2.1 + TCP."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0,
                       bytes([198, 51, 100, 7]), bytes([192, 0, 2, 1]))
    return head + tcp_header(dport, flags)


def test_reading_counts_packets_and_malformed_and_never_raises() -> None:
    raw, probes = capture()
    sock = FakeSocket([ipv4_tcp(135, SYN), b"\x45garbage", b"", ipv4_tcp(136, FIN)])
    raw._readable(_Endpoint(sock, socket.AF_INET, "tcp"))  # type: ignore[arg-type]
    assert [p.dport for p in probes] == [135, 136]
    assert raw.stats["packets"] == 4 and raw.stats["malformed"] == 2


def test_reading_ipv6_takes_the_destination_from_pktinfo() -> None:
    raw, probes = capture()
    sock = FakeSocket([tcp_header(1000, 0), tcp_header(1000, SYN)[:10]], v6_source="fe80::7%eth0")
    raw._readable(_Endpoint(sock, socket.AF_INET6, "tcp"))  # type: ignore[arg-type]
    assert probes == [Probe("fe80::7", "2001:db8::1", "tcp", 1000, "null", "atcp", False, "")]
    assert raw.stats["malformed"] == 1


RAW_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  77: 00000000:0006 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 409833 2 0000000070e7ca45 17
  78: 00000000:0011 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 409835 2 0000000070e7ca46 5
  79: garbage
"""


def test_kernel_drops_are_read_for_our_sockets_only() -> None:
    assert parse_raw_drops(RAW_TABLE, {409833}) == 17
    assert parse_raw_drops(RAW_TABLE, {409833, 409835}) == 22
    assert parse_raw_drops(RAW_TABLE, set()) == 0


def require_raw_sockets() -> None:
    """Skip without CAP_NET_RAW, but fail in CI (where tests run as root)."""
    if not RawCapture.is_supported():
        skip_or_fail("needs CAP_NET_RAW (run as root)")


def test_sockets_follow_the_plan_and_close_on_stop() -> None:
    """Opens raw sockets for the raw modes in the plan (receive only: nothing is sent)."""
    require_raw_sockets()
    async def scenario() -> list[int]:
        raw = RawCapture(lambda probe: None)
        raw.start(asyncio.get_running_loop())
        counts = [len(raw.endpoints)]
        raw.set_plan(PortPlan(tcp_raw=frozenset({135}), tcp_raw_mode="stcp"))
        counts.append(len(raw.endpoints))
        raw.set_plan(PLAN)
        counts.append(len(raw.endpoints))
        kept = {e.sock.fileno() for e in raw.endpoints if e.proto == "tcp"}
        raw.set_plan(PortPlan(udp_raw=frozenset({161}), udp_raw_mode="sudp"))
        counts.append(len(raw.endpoints))
        assert not kept & {e.sock.fileno() for e in raw.endpoints if e.proto == "tcp"}
        assert raw.kernel_drops() == 0
        raw.stop()
        counts.append(len(raw.endpoints))
        return counts

    counts = asyncio.run(scenario())
    assert counts[0] == 0 and counts[-1] == 0
    assert counts[1] in (1, 2) and counts[2] == 2 * counts[1] and counts[3] == counts[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20), st.sampled_from([socket.AF_INET, socket.AF_INET6]),
       st.sampled_from(["tcp", "udp"]))
def test_random_datagrams_are_counted_never_raised(datagrams: list[bytes], family: int, proto: str) -> None:
    raw, probes = capture()
    raw._readable(_Endpoint(FakeSocket(list(datagrams)), family, proto))  # type: ignore[arg-type]
    assert raw.stats["packets"] == len(datagrams)
    outcomes = ("malformed", "ignored", "in_use", "replies", "probes")
    assert sum(raw.stats[k] for k in outcomes) == len(datagrams)
    assert len(probes) == raw.stats["probes"]


class ScriptedProof(ClosedPortProof):
    """NoPorts evidence given by the test: True for each datagram proven refused."""

    def __init__(self, verdicts: list[bool]) -> None:
        super().__init__(proc="/nonexistent")
        self.verdicts = verdicts

    def __call__(self, version: int) -> bool:
        return self.verdicts.pop(0)


def test_replies_are_counted_not_reported() -> None:
    """A datagram the kernel delivered to a socket (NoPorts unchanged) is a reply, not a scan."""
    probes: list[Probe] = []
    raw = RawCapture(probes.append, ports_in_use=lambda proto, port: False,
                     closed_port=ScriptedProof([False, True]))
    raw.set_plan(PLAN)
    raw.set_local(LOCAL)
    raw.handle(Packet("198.51.100.53", "192.0.2.1", "udp", 53, 161))
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "udp", 40000, 161))
    assert [p.src for p in probes] == ["198.51.100.7"]
    assert raw.stats["replies"] == 1


def test_a_port_a_service_just_released_gets_a_grace_period() -> None:
    """A restarting service's clients get RSTs like a scanner would: not reported for a while."""
    raw, probes = capture()
    busy = PortPlan(tcp_raw=PLAN.tcp_raw - {880}, tcp_raw_mode="atcp",
                    skipped=(Skip("tcp", 880, SERVICE_SKIP),))
    raw.set_plan(busy)
    raw.set_plan(PLAN)                      # the service stopped: 880 is watched again
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 880, SYN))
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 881, SYN))
    assert [p.dport for p in probes] == [881] and raw.stats["in_use"] == 1
    raw.release_grace = 0.0                 # the grace period is over
    raw.handle(Packet("198.51.100.7", "192.0.2.1", "tcp", 40000, 880, SYN))
    assert [p.dport for p in probes] == [881, 880]


def test_the_skip_reason_capture_relies_on_is_portplans() -> None:
    config = Config(tcp_modes=("atcp",), udp_modes=())
    assert Skip("tcp", 22, SERVICE_SKIP) in build_plan(config, {22}, set()).skipped


def test_socket_failures_are_warnings_not_crashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """No raw sockets (no CAP_NET_RAW, IPv6 off, a seccomp filter): set_plan never raises."""
    import sensor.raw.capture as capture_module

    def refuse(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    async def scenario() -> int:
        raw = RawCapture(lambda probe: None)
        raw.start(asyncio.get_running_loop())
        monkeypatch.setattr(capture_module.socket, "socket", refuse)
        raw.set_plan(PLAN)
        opened = len(raw.endpoints)
        raw.stop()
        return opened

    assert asyncio.run(scenario()) == 0


def test_a_refused_filter_closes_that_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    require_raw_sockets()
    import sensor.raw.capture as capture_module

    def refuse(sock: socket.socket, program: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    async def scenario() -> int:
        raw = RawCapture(lambda probe: None)
        raw.start(asyncio.get_running_loop())
        monkeypatch.setattr(capture_module, "_attach", refuse)
        raw.set_plan(PLAN)
        opened = len(raw.endpoints)
        raw.stop()
        return opened

    assert asyncio.run(scenario()) == 0
