"""The kernel filter of the raw capture (sensor.raw.bpf): built, simulated and run in the kernel.

The simulation tests pin the program's logic against the plan for any port
set; the ``e2e``-marked test attaches the same programs to raw sockets in a
fresh victim namespace and sends crafted packets from an attacker namespace
over a veth pair, with a second, unfiltered socket as witness that every
packet arrived, so every "rejected" is the filter's doing.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sensor.raw import bpf
from sensor.raw.packet import ACK, FIN, PSH, RST, SYN, URG

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from repopaths import REPO


def v4_tcp(dport: int, flags: int, dst: bytes = bytes([192, 0, 2, 1]), options: bytes = b"") -> bytes:
    """IPv4 header (optionally with options) + TCP header, as an AF_INET raw socket sees it."""
    ihl = 5 + len(options) // 4
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + 20, 0, 0, 64, 6, 0,
                       bytes([198, 51, 100, 7]), dst) + options
    return head + struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 0x50, flags, 1024, 0, 0)


def v4_udp(dport: int, dst: bytes = bytes([192, 0, 2, 1])) -> bytes:
    """IPv4 header + UDP header."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0, bytes([198, 51, 100, 7]), dst)
    return head + struct.pack("!HHHH", 40000, dport, 8, 0)


def accepted(program: list[bpf.Insn], packet: bytes, ifindex: int = 2) -> bool:
    """The simulated verdict: True if the packet would reach user space."""
    return bpf.simulate(program, packet, ifindex) > 0


def test_port_ranges_compress_an_advanced_plan() -> None:
    ports = set(range(1, 65536)) - {22, 80, 443, 8080}
    assert bpf.port_ranges(ports) == [(1, 21), (23, 79), (81, 442), (444, 8079), (8081, 65535)]


def test_port_ranges_merge_closest_ranges_above_the_limit() -> None:
    ports = {1, 3, 10, 12, 100}
    assert bpf.port_ranges(ports, limit=3) == [(1, 3), (10, 12), (100, 100)]


def test_port_ranges_merge_the_smallest_gaps_measured_between_ranges() -> None:
    """The gap is next range's low minus this range's high, and the last gap counts too."""
    assert bpf.port_ranges({1, 10, 12}, limit=2) == [(1, 1), (10, 12)]
    assert bpf.port_ranges({1, *range(3, 21), 25}, limit=2) == [(1, 20), (25, 25)]
    assert bpf.port_ranges({*range(1, 11), 12, 20}, limit=2) == [(1, 12), (20, 20)]


def test_the_program_in_the_kernels_own_numbers() -> None:
    """Opcodes as linux/filter.h and ``tcpdump -dd`` write them: an oracle independent of
    bpf.py's constants, which the simulator shares (so only this test, or the kernel, can
    tell a wrong constant from a right one)."""
    program = bpf.build_filter("tcp", {135, 136, 137, 1000}, ipv4_header=True, loopback_ifindex=1)
    expected = [
        (0x20, 0, 0, 0xFFFFF008),   # ld  #ifindex  (SKF_AD_OFF + SKF_AD_IFINDEX)
        (0x15, 0, 1, 1),            # jeq #1 (loopback)
        (0x06, 0, 0, 0),            # ret #0
        (0x20, 0, 0, 16),           # ld  [16]  (IPv4 destination)
        (0x35, 0, 1, 0xE0000000),   # jge #224.0.0.0
        (0x06, 0, 0, 0),            # ret #0
        (0xB1, 0, 0, 0),            # ldxb 4*([0]&0xf)
        (0x50, 0, 0, 13),           # ldb [x + 13]  (TCP flags)
        (0x45, 0, 1, 0x14),         # jset #ACK|RST
        (0x06, 0, 0, 0),            # ret #0
        (0x48, 0, 0, 2),            # ldh [x + 2]  (destination port)
        (0x25, 3, 0, 137), (0x35, 0, 1, 135), (0x06, 0, 0, 256), (0x06, 0, 0, 0),
        (0x25, 3, 0, 1000), (0x35, 0, 1, 1000), (0x06, 0, 0, 256), (0x06, 0, 0, 0),
        (0x06, 0, 0, 0),            # ret #0
    ]
    assert [(i.code, i.jt, i.jf, i.k) for i in program] == expected
    assert bpf.encode(program) == b"".join(struct.pack("=HBBI", *insn) for insn in expected)
    six = bpf.build_filter("udp", {53}, ipv4_header=False)
    assert [(i.code, i.jt, i.jf, i.k) for i in six] == [
        (0x28, 0, 0, 2), (0x25, 3, 0, 53), (0x35, 0, 1, 53), (0x06, 0, 0, 256), (0x06, 0, 0, 0),
        (0x06, 0, 0, 0)]
    assert bpf.MAX_INSNS == 4096   # BPF_MAXINSNS
    assert bpf.simulate(program, v4_tcp(135, SYN)) == 256           # any interface but loopback
    assert bpf.simulate(program, v4_tcp(135, SYN), ifindex=1) == 0
    assert bpf.simulate(program, v4_tcp(135, SYN)[:10]) == 0        # truncated: exactly 0, not "false"


def test_a_program_of_exactly_max_insns_is_built_and_one_more_range_is_refused() -> None:
    """tcp over IPv4 with the loopback check: 12 + 4 per range; 1021 ranges make 4096 instructions."""
    ports = range(1, 2 * 1022, 2)
    assert len(bpf.build_filter("tcp", ports[:1021], True, 1, max_ranges=1021)) == bpf.MAX_INSNS
    with pytest.raises(ValueError, match="too long"):
        bpf.build_filter("tcp", ports, True, 1, max_ranges=1022)


def test_a_packet_that_ends_right_after_the_port_is_judged() -> None:
    """The IPv6 program reads the port at bytes 2-3: four bytes of transport header are enough."""
    program = bpf.build_filter("udp", {53}, ipv4_header=False)
    assert accepted(program, struct.pack("!HH", 40000, 53))
    assert not accepted(program, struct.pack("!HB", 40000, 0))


def test_advanced_plan_program_is_small() -> None:
    services = set(range(1000, 4000, 100))  # 30 listening ports -> 31 watched ranges
    program = bpf.build_filter("tcp", set(range(1, 65536)) - services, ipv4_header=True, loopback_ifindex=1)
    assert len(program) == 11 + 4 * 31 + 1
    assert len(bpf.encode(program)) == 8 * len(program)


def test_a_pathological_plan_still_fits_and_never_drops_a_watched_port() -> None:
    ports = set(range(1, 65536, 2))  # 32768 single-port ranges
    program = bpf.build_filter("udp", ports, ipv4_header=True)
    assert len(program) <= bpf.MAX_INSNS
    assert all(accepted(program, v4_udp(p)) for p in sorted(ports)[::97])


def test_empty_plan_rejects_everything() -> None:
    assert bpf.build_filter("tcp", set(), True) == [bpf.Insn(bpf.RET, k=0)]


@pytest.mark.parametrize(("flags", "expected"), [
    (SYN, True), (FIN, True), (0, True), (FIN | PSH | URG, True), (FIN | URG, True),
    (ACK, False), (SYN | ACK, False), (RST, False), (RST | ACK, False), (PSH | ACK, False),
])
def test_tcp_flags(flags: int, expected: bool) -> None:
    program = bpf.build_filter("tcp", {135}, ipv4_header=True, loopback_ifindex=1)
    assert accepted(program, v4_tcp(135, flags)) is expected


def test_loopback_multicast_and_truncated_are_rejected() -> None:
    program = bpf.build_filter("tcp", {135}, ipv4_header=True, loopback_ifindex=1)
    assert not accepted(program, v4_tcp(135, SYN), ifindex=1)
    assert not accepted(program, v4_tcp(135, SYN, dst=bytes([224, 0, 0, 1])))
    assert not accepted(program, v4_tcp(135, SYN)[:33])
    assert accepted(program, v4_tcp(135, SYN, options=b"\x01" * 8))


def test_ipv6_program_reads_the_transport_header_at_offset_zero() -> None:
    program = bpf.build_filter("tcp", {22}, ipv4_header=False, loopback_ifindex=1)
    header = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 0x50, FIN | PSH | URG, 1024, 0, 0)
    assert accepted(program, header)
    assert not accepted(program, header[:13] + bytes([ACK]) + header[14:])


@settings(max_examples=300, deadline=None)
@given(st.frozensets(st.integers(1, 65535), max_size=300), st.lists(st.integers(0, 65535), max_size=40))
def test_simulated_verdict_matches_the_plan(ports: frozenset[int], probes: list[int]) -> None:
    tcp = bpf.build_filter("tcp", ports, ipv4_header=True, loopback_ifindex=1)
    udp = bpf.build_filter("udp", ports, ipv4_header=True, loopback_ifindex=1)
    for port in [*probes, *list(ports)[:20]]:
        assert accepted(tcp, v4_tcp(port, SYN)) is (port in ports)
        assert accepted(udp, v4_udp(port)) is (port in ports)


# ---------------------------------------------------------------------------
# In the kernel: a victim namespace with filtered raw sockets, an attacker sending.

TCP_WATCHED = "set(range(1, 1025)) - {22, 80}"
SERVICE = 1010   # a real connection to a listener on a watched port: only its SYN passes
UDP_WATCHED = "set(range(1, 1025)) - {53}"

RECEIVER = textwrap.dedent(f"""
    import json, select, socket, sys, time
    from sensor.raw import bpf
    from sensor.raw.capture import _attach
    from sensor.raw.packet import parse_ipv4, parse_transport
    plan = {{"tcp": {TCP_WATCHED}, "udp": {UDP_WATCHED}}}
    lo = socket.if_nametoindex("lo")
    socks = {{}}
    for family in (socket.AF_INET, socket.AF_INET6):
        for proto, number in (("tcp", 6), ("udp", 17)):
            for filtered in (True, False):
                s = socket.socket(family, socket.SOCK_RAW, number)
                if filtered:
                    _attach(s, bpf.build_filter(proto, plan[proto], family == socket.AF_INET, lo))
                s.setblocking(False)
                socks[s] = (family == socket.AF_INET6, proto, filtered)
    def echo(server):
        while True:
            conn, _ = server.accept()
            conn.sendall(conn.recv(100))
            conn.close()
    import threading
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("192.0.2.1", {SERVICE}))
    server.listen()
    threading.Thread(target=echo, args=(server,), daemon=True).start()
    print("ready", flush=True)
    seen = {{"accepted": [], "arrived": []}}
    done, deadline = None, time.monotonic() + 20
    while time.monotonic() < deadline and (done is None or time.monotonic() < done):
        ready, _, _ = select.select(list(socks), [], [], 0.1)
        for s in ready:
            v6, proto, filtered = socks[s]
            data = s.recv(256)
            p = parse_transport(data, 6 if proto == "tcp" else 17, "::", "::") if v6 else parse_ipv4(data)
            seen["accepted" if filtered else "arrived"].append([v6, proto, p.sport, p.dport, p.flags])
            if p.sport == 65000 and done is None:
                done = time.monotonic() + 1.0
    print(json.dumps(seen), flush=True)
""")

SENDER = textwrap.dedent("""
    import json, socket, struct, sys
    cases = json.loads(sys.argv[1])
    for v6, proto, dst, sport, dport, flags in cases:
        if proto == "connect":
            with socket.create_connection((dst, dport), timeout=5) as conn:
                conn.sendall(b"hello")
                assert conn.recv(100) == b"hello"
            continue
        family = socket.AF_INET6 if v6 else socket.AF_INET
        number = 6 if proto == "tcp" else 17
        s = socket.socket(family, socket.SOCK_RAW, number)
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, 16 if proto == "tcp" else 6)
        if proto == "tcp":
            data = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 1024, 0, 0)
        else:
            data = struct.pack("!HHHH", sport, dport, 12, 0) + b"ping"
        s.sendto(data, (dst, 0))
        s.close()
""")

V4, V6 = "192.0.2.1", "2001:db8::1"
# (ipv6, proto, destination, source port (the case's id), destination port, TCP flags, accepted?)
ATTACKER_CASES = [
    (False, "tcp", V4, 20001, 1000, SYN, True),
    (False, "tcp", V4, 20002, 1001, FIN, True),
    (False, "tcp", V4, 20003, 1002, 0, True),
    (False, "tcp", V4, 20004, 1003, FIN | PSH | URG, True),
    (False, "tcp", V4, 20005, 1004, FIN | URG, True),
    (False, "tcp", V4, 20006, 1005, SYN | ACK, False),
    (False, "tcp", V4, 20007, 1006, ACK, False),
    (False, "tcp", V4, 20008, 1007, RST, False),
    (False, "tcp", V4, 20009, 22, SYN, False),        # a real service's port
    (False, "tcp", V4, 20010, 2000, SYN, False),      # above ADVANCED_PORTS
    (False, "udp", V4, 20011, 1000, 0, True),
    (False, "udp", V4, 20012, 53, 0, False),
    (False, "udp", V4, 20013, 5353, 0, False),
    (False, "udp", "224.0.0.1", 20014, 1000, 0, False),
    (True, "tcp", V6, 20021, 1000, SYN, True),
    (True, "tcp", V6, 20022, 1001, FIN, True),
    (True, "tcp", V6, 20023, 1002, 0, True),
    (True, "tcp", V6, 20024, 1003, FIN | PSH | URG, True),
    (True, "tcp", V6, 20025, 1004, PSH | ACK, False),
    (True, "tcp", V6, 20026, 80, SYN, False),
    (True, "udp", V6, 20027, 1000, 0, True),
    (True, "udp", V6, 20028, 53, 0, False),
]
# Sent inside the victim itself: loopback traffic never counts.
LOCAL_CASES = [
    (False, "tcp", "127.0.0.1", 20031, 1000, SYN, False),
    (False, "tcp", V4, 20032, 1000, SYN, False),
    (True, "tcp", "::1", 20033, 1000, SYN, False),
    (False, "udp", "127.0.0.1", 20034, 1000, 0, False),
]
SENTINEL = [(False, "udp", V4, 65000, 1000, 0, True)]


def _send(lab: object, ns: str, cases: list[tuple[bool, str, str, int, int, int, bool]]) -> None:
    payload = json.dumps([list(c[:6]) for c in cases])
    result = lab.run_in(ns, ["/usr/bin/python3", "-c", SENDER, payload])  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_the_kernel_runs_the_filter_as_planned() -> None:
    from lab import Lab, require_e2e
    require_e2e()
    with Lab(f"ps3bpf{os.getpid() % 10000}") as lab:
        lab.run_victim(["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])
        lab.run_attacker(["ip", "route", "add", "224.0.0.0/4", "dev", "eth0"])
        receiver = lab.spawn_victim(["/usr/bin/python3", "-c", RECEIVER], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready", receiver.stderr
        _send(lab, lab.attacker, ATTACKER_CASES)
        _send(lab, lab.victim, LOCAL_CASES)
        _send(lab, lab.attacker, [(False, "connect", V4, 0, SERVICE, 0, True)])
        _send(lab, lab.attacker, SENTINEL)
        out, err = receiver.communicate(timeout=60)
    seen = json.loads(out)
    arrived = {row[2] for row in seen["arrived"]}
    passed = {row[2] for row in seen["accepted"] if row[3] != SERVICE}
    cases = ATTACKER_CASES + LOCAL_CASES
    assert {c[3] for c in cases} - {20014} <= arrived, f"packets missing: {seen}\n{err}"
    assert passed - {65000} == {c[3] for c in cases if c[6]}
    for row in seen["accepted"]:
        assert row[4] & (ACK | RST) == 0
    connection = [row for row in seen["arrived"] if row[1] == "tcp" and row[3] == SERVICE]
    assert len(connection) >= 4 and connection[0][4] == SYN, connection   # inbound: SYN, ACK, data, FIN
    passed_conn = [row for row in seen["accepted"] if row[3] == SERVICE]
    assert [row[4] for row in passed_conn] == [SYN], passed_conn


COARSEN = textwrap.dedent("""
    import asyncio, json
    from sensor.raw.capture import RawCapture
    from sensor.portplan import PortPlan

    async def main():
        raw = RawCapture(lambda probe: None)
        raw.start(asyncio.get_running_loop())
        raw.set_plan(PortPlan(tcp_raw=frozenset(range(1, 4000, 2)), tcp_raw_mode="atcp"))
        print(json.dumps({"sockets": len(raw.endpoints), "insns": raw.stats["filter_insns"]}))
        raw.stop()

    asyncio.run(main())
""")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_filter_too_big_for_optmem_is_coarsened_not_refused() -> None:
    """Debian 12 (Linux 6.1) allows 20480 bytes of socket option memory: 2000 ranges do not fit."""
    from lab import delete_netns, require_e2e, run
    require_e2e()
    ns = f"ps3opt{os.getpid() % 10000}"
    delete_netns(ns)
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.optmem_max=20480"])
        out = run(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", COARSEN],
                  env={**os.environ, "PYTHONPATH": str(REPO)}).stdout
    finally:
        delete_netns(ns)
    result = json.loads(out.splitlines()[-1])
    assert result["sockets"] == 2
    assert 0 < result["insns"] <= 4 * 400 + 12
