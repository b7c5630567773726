"""Ban rate of the jail pack's ban actions: bans per second, fail2ban CPU seconds and RSS.

Usage (root): ``.venv/bin/python bench/banrate.py [--count 5000] [--actions nftables,portsentry-nft]
[--paths banip,journal] [--no-record]``

For each action and each path, a fresh lab (tests/e2e/lab.py, namespaces
``psbanr-v``/``psbanr-a``) and a fresh private fail2ban-server with our jail pack
(tests/e2e/f2b.py: Debian's pristine config, our fail2ban/ over it, a test
.local) in the victim namespace; ``banaction`` in the .local picks the action:
``nftables[type=allports]`` (the stock shell action, one fork of ``nft`` per ban)
or ``portsentry-nft.py`` (fail2ban/action.d/portsentry-nft.py, libnftables
in-process).  N distinct forged addresses from 198.18.0.0/15 are banned:

- ``banip``: one ``fail2ban-client set portsentry banip A1 ... AN`` (the action's
  own throughput: fail2ban bans the list in one go);
- ``journal``: N sensor-format ``attackalert`` lines written to the journal by
  one feeder process (python3-systemd), matched by the jail through
  ``journalmatch = _PID=<feeder>`` (the whole pipeline: journal reader, filter,
  ban queue, action).

The clock runs from the command (or the first journal line) until
``nft list set`` in the victim holds all N addresses (polled every 0.25 s,
bounded).  fail2ban CPU = utime+stime of fail2ban-server and of its waited-for
children (the forked shells and ``nft``s), from /proc/PID/stat, from the command
until fail2ban is idle again (less than 20 ms CPU in a second: its observer thread
writes each ban to the database after the ban); RSS = VmHWM and VmRSS of
fail2ban-server then.  Appends a section to
bench/RESULTS.md with the command.  Every loop is bounded; namespaces and
processes are removed by PID.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests" / "e2e"), str(REPO)]

from f2b import Fail2Ban  # noqa: E402
from lab import SYSTEM_PYTHON, VICTIM4, Journal, Lab, kill_pid, run, wait_until  # noqa: E402

from sensor.alert import Alert, format_alert  # noqa: E402

ACTIONS = {"nftables": "nftables[type=allports]", "portsentry-nft": "portsentry-nft.py"}
FORGED_BASE = ipaddress.ip_address("198.18.0.0")
CLK_TCK = os.sysconf("SC_CLK_TCK")

FEEDER = """
import signal, sys
from systemd import journal
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
lines = sys.stdin.buffer.read().decode().splitlines()
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.close()
signal.sigwait([signal.SIGUSR1])
for line in lines:
    journal.send(line, SYSLOG_IDENTIFIER="portsentry-sensor", PRIORITY="5")
sys.stdout.write("done\\n"); sys.stdout.flush()
signal.sigwait([signal.SIGUSR1])
"""


def forged(count: int, offset: int = 0) -> list[str]:
    """``count`` distinct addresses from 198.18.0.0/15 (skipping .0 and .255 of each /24)."""
    out: list[str] = []
    n = offset
    while len(out) < count:
        n += 1
        if n % 256 in (0, 255):
            continue
        out.append(str(FORGED_BASE + n))
    return out


def jail_local(action: str, journalmatch: str) -> str:
    """Long bans (nothing expires during the run), the action under test, our journal match."""
    return (f"[portsentry]\njournalmatch = {journalmatch}\nbanaction = {ACTIONS[action]}\n"
            "bantime = 1h\nfindtime = 1h\nignoreip = 127.0.0.0/8 ::1\n")


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own utime+stime, waited-for children's cutime+cstime) of a process, seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / CLK_TCK
    children = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return own, children


def settle(pid: int, limit: float = 60.0) -> tuple[float, float]:
    """CPU once fail2ban is idle again (its observer writes bans to the database after the ban)."""
    last = proc_cpu(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = proc_cpu(pid)
        if sum(now) - sum(last) < 0.02:
            return now
        last = now
    return last


def proc_mem(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS in kB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0])
    return found


def set_size(f2b: Fail2Ban) -> int:
    """Elements in the IPv4 set now."""
    return len(f2b.nft_set(4))


def measure(action: str, path: str, count: int, timeout: float) -> dict[str, object]:
    """One run: fresh lab and fail2ban, N bans, the figures."""
    addresses = forged(count)
    feeder = None
    with Lab("psbanr") as lab:
        workdir = Path(tempfile.mkdtemp(prefix="psbanr-", dir="/tmp"))
        if path == "journal":
            text = "\n".join(format_alert(Alert(a, VICTIM4, "tcp", 79, "syn", "atcp", False, 1))[0]
                             for a in addresses)
            feeder = subprocess.Popen([SYSTEM_PYTHON, "-c", FEEDER], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            assert feeder.stdin is not None and feeder.stdout is not None
            feeder.stdin.write(text)
            feeder.stdin.close()
            assert feeder.stdout.readline().strip() == "ready"
            match = f"_PID={feeder.pid}"
        else:
            match = "_PID=1 _COMM=portsentry-banrate-nobody"
        f2b = Fail2Ban(lab, workdir, jail_local(action, match))
        try:
            f2b.start()
            assert f2b.proc is not None
            pid = f2b.proc.pid
            time.sleep(1.0)
            cpu0 = proc_cpu(pid)
            start = time.monotonic()
            client_s = None
            if path == "banip":
                f2b.client("set", "portsentry", "banip", *addresses, timeout=timeout)
                client_s = time.monotonic() - start
            else:
                assert feeder is not None and feeder.stdout is not None
                os.kill(feeder.pid, __import__("signal").SIGUSR1)
            full = wait_until(lambda: set_size(f2b) >= count, timeout, step=0.25)
            seconds = time.monotonic() - start
            cpu_at_full = proc_cpu(pid)
            cpu1 = settle(pid)
            mem = proc_mem(pid)
            got = set_size(f2b)
            banned = len(f2b.banned())
            errors = sum(1 for line in f2b.log_text().splitlines() if " ERROR " in line)
            t0 = time.monotonic()
            f2b.stop()
            stop_s = time.monotonic() - t0
            return {"action": action, "path": path, "count": count, "in_set": got, "complete": full,
                    "seconds": round(seconds, 3), "client_seconds": None if client_s is None else round(client_s, 3),
                    "bans_per_s": round(got / seconds, 1), "jail_banned": banned, "errors": errors,
                    "cpu_at_full_s": round(sum(cpu_at_full) - sum(cpu0), 2),
                    "cpu_own_s": round(cpu1[0] - cpu0[0], 2), "cpu_children_s": round(cpu1[1] - cpu0[1], 2),
                    "hwm_mb": round(mem["VmHWM"] / 1024, 1), "rss_mb": round(mem["VmRSS"] / 1024, 1),
                    "stop_seconds": round(stop_s, 2)}
        finally:
            f2b.stop()
            if feeder is not None:
                kill_pid(feeder)
            run(["rm", "-rf", str(workdir)], check=False)


def table(rows: list[dict[str, object]]) -> str:
    """The results as Markdown."""
    head = ("| action | path | bans | time to all in the set | bans/s | fail2ban CPU s until idle (own + forked) "
            "| fail2ban RSS (peak / after) | `fail2ban-client stop` with N bans | errors |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        cpu_own, cpu_kids = float(str(r["cpu_own_s"])), float(str(r["cpu_children_s"]))
        body += (f"| {r['action']} | {r['path']} | {r['in_set']:,} of {r['count']:,} | {r['seconds']} s"
                 f"{'' if r['complete'] else ' (timed out)'} | **{r['bans_per_s']:,}** | "
                 f"{cpu_own + cpu_kids:.2f} ({cpu_own:.2f} + {cpu_kids:.2f}) | {r['hwm_mb']} / {r['rss_mb']} MB | "
                 f"{r['stop_seconds']} s | {r['errors']} |\n")
    return head + body


def main(argv: Sequence[str] | None = None) -> int:
    """Run every action x path, print and record the table."""
    parser = argparse.ArgumentParser(description="ban rate of the jail's ban actions (see the module docstring)")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--actions", default=",".join(ACTIONS))
    parser.add_argument("--paths", default="banip,journal")
    parser.add_argument("--timeout", type=float, default=240.0, help="per run, seconds (bound)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/banrate.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if not 1 <= args.count <= 100_000:
        print("bench/banrate.py: --count must be 1..100000", file=sys.stderr)
        return 2
    journal = Journal().start()
    rows = []
    load_before = run(["cat", "/proc/loadavg"]).stdout.strip()
    try:
        for action in args.actions.split(","):
            for path in args.paths.split(","):
                row = measure(action, path, args.count, args.timeout)
                print(row, flush=True)
                rows.append(row)
    finally:
        journal.stop()
    load_after = run(["cat", "/proc/loadavg"]).stdout.strip()
    text = table(rows)
    print(text)
    if not args.no_record:
        head = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
        command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/banrate.py", *(argv or sys.argv[1:])])
        with open(args.results, "a") as out:
            out.write(f"\n\n## Ban rate {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}\n\n"
                      f"Command (as root): `{command}`  \nTree: {head}  \n"
                      f"Load before: `{load_before}`  \nLoad after: `{load_after}`\n\n{text}\n"
                      f"<details><summary>raw</summary>\n\n```\n{rows}\n```\n</details>\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
