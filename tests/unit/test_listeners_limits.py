"""Regressions from the fault tests (issue 7) in sensor.listeners: fd limits and busy dual-stack ports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sensor.listeners import FD_RESERVE, BindFailure, fd_budget, merge_families

REPO = Path(__file__).resolve().parents[2]

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
