"""Benchmark: ``portsentry-sensor report --since 7d`` over a journal of 1,000,000 alert entries (issue 16).

Generates a journal file with systemd-journal-remote (tests/journalfile.py): N alert
entries spread evenly over the last 6.5 days, fields as the sensor writes them
(sensor.alert.format_alert) plus the trusted _SYSTEMD_UNIT/_UID journald adds; 20,000
sources (a tenth IPv6), first alerts and summary lines, all scan types.  Then times the
report command (a fresh process each time, as an operator runs it) --runs times.

    .venv/bin/python bench/report_bench.py                  # 1,000,000 entries, 3 runs, appended to RESULTS.md
    .venv/bin/python bench/report_bench.py --entries 100000 --no-record
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from journalfile import export_entry, write_journal_stream  # noqa: E402

from sensor.alert import SCAN_TYPES, Alert, format_alert  # noqa: E402

TRUSTED = {"_SYSTEMD_UNIT": "portsentry-sensor.service", "_UID": "998", "_PID": "812",
           "_COMM": "python3", "_TRANSPORT": "journal"}


def sources(count: int, rng: random.Random) -> list[str]:
    found = []
    for index in range(count):
        if index % 10 == 9:
            found.append(f"2001:db8:{index // 65536:x}:{index % 65536:x}::{rng.randrange(1, 65535):x}")
        else:
            found.append(f"198.{18 + (index >> 16) % 2}.{(index >> 8) % 256}.{index % 256}")
    return found


def chunks(entries: int, now: float, rng: random.Random, per_chunk: int = 10_000) -> Iterator[bytes]:
    addresses = sources(20_000, rng)
    start = now - 6.5 * 86400
    step = 6.5 * 86400 / entries
    scans = [s for s in SCAN_TYPES if s != "unknown"]
    buffer: list[bytes] = []
    for index in range(entries):
        src = addresses[rng.randrange(len(addresses))]
        scan = rng.choice(scans)
        summary = rng.random() < 0.4
        alert = Alert(src=src, dst="2001:db8::1" if ":" in src else "192.0.2.1",
                      proto="udp" if scan == "udp" else "tcp", dport=rng.randrange(1, 65536), scan=scan,
                      mode="audp" if scan == "udp" else ("tcp" if scan == "connect" else "atcp"),
                      verified=scan == "connect", count=rng.randrange(2, 500) if summary else 1,
                      summary=summary, window=30 if summary else 0)
        message, fields = format_alert(alert)
        buffer.append(export_entry(start + index * step, {**fields, **TRUSTED, "MESSAGE": message}))
        if len(buffer) == per_chunk:
            yield b"".join(buffer)
            buffer.clear()
    if buffer:
        yield b"".join(buffer)


def measure(files: list[str], runs: int, dbdir: str) -> tuple[list[float], str]:
    """Wall time of ``runs`` report runs (fresh processes), and the report's totals line."""
    command = [sys.executable, "-m", "sensor", "report", "--since", "7d", "--fail2ban-db", f"{dbdir}/none"]
    for name in files:
        command += ["--file", name]
    times, head = [], ""
    for _ in range(runs):
        began = time.monotonic()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        times.append(time.monotonic() - began)
        assert result.returncode == 0, result.stderr
        head = result.stdout.splitlines()[1]
    return times, head


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portsentry-report-bench-") as tmp:
        journal = Path(tmp) / "alerts.journal"
        began = time.monotonic()
        write_journal_stream(journal, chunks(args.entries, time.time(), random.Random(16)))
        generated = time.monotonic() - began
        files = sorted(str(p) for p in Path(tmp).glob("*.journal"))
        size = sum(Path(p).stat().st_size for p in files) / 2**20
        times, head = measure(files, args.runs, tmp)
    load = os.getloadavg()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    runs = ", ".join(f"{t:.2f} s" for t in times)
    text = (f"\n## report --since 7d over {args.entries:,} alert entries ({when})\n\n"
            f"Command: `.venv/bin/python bench/report_bench.py --entries {args.entries} --runs {args.runs}` "
            f"(times `python3 -m sensor report --since 7d --file ...`, a fresh process per run)\n\n"
            f"- journal: {len(files)} file(s), {size:.0f} MiB, written in {generated:.0f} s "
            f"by systemd-journal-remote\n"
            f"- report: {head}\n"
            f"- wall time per run: {runs}; median **{statistics.median(times):.2f} s** (target <= 10 s; "
            f"{os.cpu_count()} CPUs, load after {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})\n")
    print(text)
    if not args.no_record:
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
