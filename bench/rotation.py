"""Rotating IPv6 scanner benchmark (issue 14): N real addresses of one /64, one connection each.

Usage (root): ``.venv/bin/python bench/rotation.py [--counts 50,10000] [--no-record]``

Each run builds a fresh lab (tests/e2e/lab.py) with the stack of
tests/e2e/test_prefix_rotation.py: the sensor (bound ``tcp`` mode, SCAN_TRIGGER 0,
IPV6_PREFIX 64, SCAN_WINDOW 8 s) and a private fail2ban-server with the shipped
jail pack and ``banaction = portsentry-nft.py`` in the victim.  COUNT addresses of
2001:db8:77::/64 are added to the attacker's link (``ip -batch``, nodad); each
opens one TCP connection to one watched port (non-blocking, 200 at a time, at most
0.2 s a batch; once the /64 is banned the rest are rejected).  Measured: the rotation's
start to ``2001:db8:77::/64`` in the victim's nft set net6-set-portsentry (polled
every 50 ms), the sensor's alert lines after the window closed (address and
prefix lines together), the sensor's peak RSS (VmHWM), fail2ban's bans.
Prints a Markdown table and appends it with the command to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests" / "e2e"), str(REPO)]

from f2b import TABLE, Fail2Ban  # noqa: E402
from lab import SYSTEM_PYTHON, VICTIM6, Journal, Lab, SensorProcess, ensure_user, world_readable_dir  # noqa: E402
from report import record, run_header, uptime  # noqa: E402
from test_jail_ban import SERVICE_TCP, TCP_WATCHED, jail_local  # noqa: E402
from test_prefix_rotation import NET, SENSOR_CONF  # noqa: E402

WINDOW = 8.0  # SCAN_WINDOW of SENSOR_CONF

# Non-blocking connects, 200 at a time, each batch given at most 0.2 s: once the /64 is
# banned the SYNs meet `reject` (ICMPv6 unreachable, which a connecting socket keeps retrying),
# so a blocking loop would wait out a timeout for every remaining address.
ROTATE_FAST = """
import select, socket, sys, time
pairs = open(sys.argv[2]).read().split()
target = sys.argv[1]
for start in range(0, len(pairs), 200):
    socks = []
    for item in pairs[start:start + 200]:
        addr, port = item.rsplit(":", 1)
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.bind((addr, 0))
            s.connect_ex((target, int(port)))
        except OSError:
            pass
        socks.append(s)
    deadline = time.monotonic() + 0.2
    waiting = list(socks)
    while waiting and time.monotonic() < deadline:
        _, done, _ = select.select([], waiting, [], max(0.0, deadline - time.monotonic()))
        waiting = [s for s in waiting if s not in done]
    for s in socks:
        s.close()
"""


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def one_run(count: int, journal: Journal, user: tuple[str, int, int]) -> str:
    base = int(ipaddress.IPv6Address("2001:db8:77::1:0"))
    addrs = [str(ipaddress.IPv6Address(base + i)) for i in range(count)]
    workdir = world_readable_dir("psbench-rot-")
    try:
        with Lab("psbrot") as lab:
            with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as batch:
                batch.writelines(f"addr add {a}/64 dev eth0 nodad\n" for a in addrs)
            lab.run_attacker(["ip", "-batch", batch.name], check=True, timeout=300)
            Path(batch.name).unlink()
            lab.run_victim(["ip", "-6", "route", "add", "2001:db8::/32", "dev", "eth0"], check=True)
            lab.serve_tcp(SERVICE_TCP)
            sensor = SensorProcess(lab, SENSOR_CONF, user=user).start()
            f2b = Fail2Ban(lab, workdir, jail_local(user[1], sensor.pid, "banaction = portsentry-nft.py\n"))
            try:
                f2b.start()
                f2b.client("set", "portsentry", "bantime", "600")
                cursor = journal.cursor()
                pairs = [f"{a}:{TCP_WATCHED[i % len(TCP_WATCHED)]}" for i, a in enumerate(addrs)]
                arglist = Path(workdir) / "pairs"
                arglist.write_text("\n".join(pairs))
                started = time.monotonic()
                proc = lab.spawn_attacker([SYSTEM_PYTHON, "-c", ROTATE_FAST, VICTIM6, str(arglist)])
                banned_after = None
                deadline = started + 120
                while time.monotonic() < deadline:
                    out = lab.run_victim(["nft", "list", "set", *TABLE, "net6-set-portsentry"]).stdout
                    if NET in out:
                        banned_after = time.monotonic() - started
                        break
                    time.sleep(0.05)
                proc.wait(timeout=600)
                rotated = time.monotonic() - started
                time.sleep(WINDOW + 3)  # the window's closing summary
                alerts = sensor.alerts(journal, cursor)
                prefix_lines = sum(1 for a in alerts if a.get("PORTSENTRY_NET"))
                hwm = vm_hwm_kb(sensor.pid)
                bans = f2b.status().count(NET)
            finally:
                f2b.stop()
                sensor.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ban = "not banned" if banned_after is None else f"{banned_after:.2f} s"
    return (f"| {count:,} | {rotated:.1f} s | {ban} | {len(alerts)} ({prefix_lines} prefix) | "
            f"{'yes' if bans else 'no'} | {hwm / 1024:.1f} MB |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rotating IPv6 scanner (issue 14)")
    parser.add_argument("--counts", default="50,10000")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/rotation.py", *(argv if argv is not None else sys.argv[1:])])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = uptime()
    journal = Journal().start()
    user = ensure_user()
    rows = []
    try:
        for count in (int(c) for c in args.counts.split(",")):
            rows.append(one_run(count, journal, user))
            print(rows[-1], flush=True)
    finally:
        journal.stop()
    text = (run_header(f"Rotating IPv6 scanner run {started} (issue 14)", command, load_before)
            + "| addresses of one /64, one connection each | rotation took | start -> /64 in the nft set | "
            "sensor alert lines (all) | /64 listed by status | sensor peak RSS |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    print(text)
    if not args.no_record:
        record(text, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
