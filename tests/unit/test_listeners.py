"""sensor/listeners.py: PKTINFO parsing, the loopback guard, binding on loopback (no privileges); and
regressions from the fault tests (issue 7): fd limits and busy dual-stack ports (was test_listeners_limits.py)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sensor.listeners import (
    FD_RESERVE,
    IP_PKTINFO,
    BindFailure,
    BoundListeners,
    fd_budget,
    loopback_filter,
    merge_families,
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


# --- from the fault tests (issue 7): fd limits and busy dual-stack ports ---------------------------------

from repopaths import REPO  # noqa: E402

UNDER_LIMIT = """
import asyncio, os, resource, socket
from sensor.listeners import FD_RESERVE, BoundListeners

def free_ports(count):
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return tuple(ports)

async def main():
    ports = free_ports(40)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    listeners = BoundListeners(lambda probe: None)
    failures = await listeners.apply(ports, ())
    free = 64 - len(os.listdir("/proc/self/fd"))
    print(len(listeners.open), len(failures), free, all("file-descriptor limit" in str(f) for f in failures))
    import watchdog.observers  # what crashed the daemon right after binding
    listeners.close()

asyncio.run(main())
"""


def test_fd_limit_64_leaves_descriptors_free_instead_of_crashing() -> None:
    """Regression: under `ulimit -n 64` with 80 sockets wanted, binding used every descriptor and the
    daemon then died importing watchdog (OSError EMFILE, found by test_faults.py); now binding stops
    FD_RESERVE short of the limit and reports the rest, one line per port."""
    proc = subprocess.run([sys.executable, "-c", UNDER_LIMIT], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    bound, failures, free, clear = proc.stdout.split()
    assert int(bound) > 0 and int(failures) > 0 and clear == "True", proc.stdout
    assert int(free) >= FD_RESERVE - 1, proc.stdout  # listdir itself held one descriptor
    assert int(bound) + 2 * int(failures) >= 80 - 1   # a port half-bound has one failure line


def test_fd_budget_counts_open_descriptors(tmp_path: Path) -> None:
    """The budget is the soft limit minus what is open minus the reserve."""
    for name in range(5):
        (tmp_path / str(name)).touch()
    budget = fd_budget(reserve=3, fd_dir=str(tmp_path))
    assert budget is not None
    left, soft = budget
    assert left == soft - 5 - 3
    assert fd_budget(fd_dir=str(tmp_path / "missing")) is None


def test_a_port_busy_on_both_families_is_one_warning() -> None:
    """Regression: a dual-stack service on a watched port gave two warnings (IPv4 and IPv6), not one."""
    busy = "already in use by another program"
    merged = merge_families([BindFailure("tcp", 5001, "IPv4", busy), BindFailure("tcp", 5002, "IPv4", busy),
                             BindFailure("tcp", 5001, "IPv6", busy), BindFailure("udp", 5001, "IPv6", "x")])
    assert [str(f) for f in merged] == [
        f"TCP port 5001 (IPv4, IPv6) not watched: {busy}",
        "UDP port 5001 (IPv6) not watched: x",
        f"TCP port 5002 (IPv4) not watched: {busy}",
    ]


# --- issue 12, item 8: a huge bound range under a low descriptor limit ------------------------------

DAEMON_UNDER_LIMIT = """
import asyncio, io, json, resource, socket, sys
from sensor.daemon import Sensor
from sensor.sinks import Emitter, StderrSink

socks = [socket.socket() for _ in range(150)]
for s in socks:
    s.bind(("0.0.0.0", 0))
ports = sorted(s.getsockname()[1] for s in socks)
for s in socks:
    s.close()
path = sys.argv[1]
with open(path, "w") as handle:
    handle.write('TCP_MODE="tcp"\\nUDP_MODE="off"\\nTCP_PORTS="%s"\\nIGNORE_FILE=""\\nLOG_TARGET="stderr"\\n'
                 % ",".join(map(str, ports)))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

async def main():
    sensor = Sensor(path, defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    await sensor.apply_plan()
    first = stream.getvalue()
    calls = []
    real = sensor.listeners.apply
    async def counting(*args, **kw):
        calls.append(1)
        return await real(*args, **kw)
    sensor.listeners.apply = counting
    for _ in range(3):
        await sensor.refresh_plan()
    watched = sensor.listeners.watched("tcp")
    sensor.shutdown()
    print(json.dumps({"lines": first.splitlines(), "later": stream.getvalue()[len(first):].splitlines(),
                      "retries": len(calls), "watched": watched, "ports": ports}))

asyncio.run(main())
"""


def test_descriptor_limit_is_one_summarised_line_and_never_retried(tmp_path: Path) -> None:
    """Regression (issue 12, item 8): 150 ports (300 sockets) under `ulimit -n 64` wrote one warning per
    port and retried every one of them on every PLAN_REFRESH; now one line says what is not watched,
    why and what to raise, and a refresh does not try again (a SIGHUP does)."""
    import json

    proc = subprocess.run([sys.executable, "-c", DAEMON_UNDER_LIMIT, str(tmp_path / "p.conf")], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    warnings = [line for line in out["lines"] if "not watched" in line]
    assert len(warnings) == 1, out["lines"]
    line = warnings[0]
    assert "ulimit -n 64" in line and "LimitNOFILE=" in line and "\n" not in line
    watched, ports = out["watched"], out["ports"]
    assert 0 < len(watched) < 30
    from sensor.portspec import format_ports
    assert f"TCP ports {format_ports([p for p in ports if p not in watched])} " in line or \
        format_ports([p for p in ports if p not in watched]) in line, line
    assert out["retries"] == 0 and out["later"] == [], out


def test_check_counts_only_what_the_descriptor_limit_allows(tmp_path: Path) -> None:
    """Regression (issue 12, item 8): `check` said 'watched 65535' for TCP_PORTS="1-65535" although the
    descriptor limit allowed a few dozen sockets; now it counts what fits and names the limit."""
    import resource

    conf = tmp_path / "p.conf"
    conf.write_text('TCP_MODE="tcp"\nUDP_MODE="off"\nTCP_PORTS="1-65535"\nIGNORE_FILE=""\n')

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.run([sys.executable, "-m", "sensor", "check", "--config", str(conf)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, preexec_fn=limit,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    watched = [line for line in proc.stdout.splitlines() if line.strip().startswith("watched ")]
    assert len(watched) == 1, proc.stdout
    count = int(watched[0].split()[1].rstrip(":"))
    assert 0 < count <= (64 - FD_RESERVE) // 2, proc.stdout
    limited = [line for line in proc.stdout.splitlines() if "ulimit -n 64" in line]
    assert len(limited) == 1 and "not watched" in limited[0] and "LimitNOFILE=" in limited[0], proc.stdout


def test_many_failures_for_one_reason_are_one_line() -> None:
    """TCP_PORTS="1-65535" without CAP_NET_BIND_SERVICE: 1,023 refusals are one line, not 1,023."""
    from sensor.listeners import failure_lines

    denied = "permission denied (needs CAP_NET_BIND_SERVICE below 1024)"
    many = merge_families([BindFailure("tcp", p, f, denied) for p in range(1, 1024) for f in ("IPv4", "IPv6")])
    few = [BindFailure("udp", p, "IPv4", "already in use by another program") for p in (53, 123)]
    lines = failure_lines(many + few)
    assert lines == [f"TCP ports 1-1023 (IPv4, IPv6) not watched: {denied}",
                     "UDP port 53 (IPv4) not watched: already in use by another program",
                     "UDP port 123 (IPv4) not watched: already in use by another program"]


def test_allocate_fills_lowest_ports_first_both_protocols_and_families() -> None:
    """The split `check` shows is the daemon's: by port, TCP before UDP, IPv4 before IPv6."""
    from sensor.listeners import allocate, limit_summary

    assert allocate((1, 2, 3), (2, 9), None) == ({}, 0)
    left_out, missing = allocate((1, 2, 3), (2, 9), 5)   # 1/tcp x2, 2/tcp x2, 2/udp IPv4
    assert left_out == {"udp": [2, 9], "tcp": [3]} and missing == 5
    assert allocate((1,), (), -3) == ({"tcp": [1]}, 2)
    line = limit_summary(left_out, missing, 64, 5)
    assert line.startswith("TCP port 3, UDP ports 2,9 not watched: the file-descriptor limit (ulimit -n 64, ")
    assert line.endswith("allows 5 tripwire sockets, 5 more are needed (one per port and family): "
                         "raise LimitNOFILE= to at least 69")
