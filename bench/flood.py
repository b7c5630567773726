"""Decoy flood benchmark (issue 11): forged one-SYN sources plus a real nmap scan, sensor side.

Usage (root): ``.venv/bin/python bench/flood.py [--runs 20000@2000,600000@10000] [--family 4|6|both]
[--no-record]``

Each run builds a fresh lab (tests/e2e/lab.py) and calls tests/e2e/floodrun.py's
``run_flood``: the sensor (advanced TCP mode, shipped flood-guard defaults) and a
private fail2ban-server with the shipped jail pack in the victim; COUNT forged
SYNs at RATE packets per second from the attacker namespace (bench/spoof.py,
bounded in count and time; IPv4 198.18.0.0/15, IPv6 2001:db8:5000::/36), and 3 s
in a real ``nmap -sS -p 1-200`` from the attacker's own address.  Measured: the
real scanner's first probe (upper bound: just before nmap starts) to fail2ban's
'Ban' log line, forged addresses banned, the sensor's journal lines (alerts and
adminalert), the sensor's peak RSS (VmHWM), fail2ban's CPU seconds and peak
RSS.  Prints a Markdown table and appends it with the command to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests" / "e2e"), str(REPO)]

from floodrun import SENSOR_CONF, FloodResult, run_flood  # noqa: E402

SLOW_CONF = SENSOR_CONF.replace('SCAN_TRIGGER="0"', 'SCAN_TRIGGER="2"')
from lab import Journal, Lab, ensure_user, world_readable_dir  # noqa: E402
from report import record, run_header, uptime  # noqa: E402


def _runs(text: str) -> list[tuple[int, float]]:
    runs = []
    for item in text.split(","):
        count, rate = item.split("@")
        runs.append((int(count), float(rate)))
    return runs


def row(label: str, result: FloodResult) -> str:
    """One Markdown row."""
    ban = "not banned" if result.scan_to_ban is None else f"{result.scan_to_ban:.2f} s"
    flood = [line for line in result.admin_lines if "flood" in line]
    if result.slow_probes:
        slow = ("not detected" if result.slow_alert_after is None else
                f"detected {result.slow_alert_after:.0f} s after its first probe, at port {result.slow_alert_count}")
        label += f", slow scanner ({result.slow_probes} probes, 20 s apart, SCAN_TRIGGER=2): {slow}"
    return (f"| {label} | {result.sent:,} in {result.flood_seconds:.1f} s | {ban} | {result.forged_banned:,} | "
            f"{result.sensor_lines} ({result.alert_lines} alerts, {len(result.admin_lines)} admin) | "
            f"{'yes' if flood else 'no'} | {result.sensor_peak_rss_kb / 1024:.1f} MB | "
            f"{result.f2b_cpu_s:.2f} s | {result.f2b_peak_rss_kb / 1024:.1f} MB |")


def ban_action() -> str:
    """The shipped jail's banaction (the runs use the shipped pack; their .local does not change it)."""
    jail = (REPO / "fail2ban" / "jail.d" / "portsentry.conf").read_text()
    found = [line.split("=", 1)[1].strip() for line in jail.splitlines() if line.startswith("banaction")]
    return f"`{found[-1]}`" if found else "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Run each size once per family; print and record the table."""
    parser = argparse.ArgumentParser(description="decoy flood + real scan (issue 11), sensor side")
    parser.add_argument("--runs", default="3000@1000,20000@2000", help="COUNT@RATE,... (packets, packets/s)")
    parser.add_argument("--family", choices=("4", "6", "both"), default="4")
    parser.add_argument("--scan-delay", type=float, default=3.0)
    parser.add_argument("--slow", type=int, default=0,
                        help="also a slow scanner (SCAN_TRIGGER=2): this many probes, one new port every 20 s")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args(argv)
    command = shlex.join([".venv/bin/python", "bench/flood.py", *(argv if argv is not None else sys.argv[1:])])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = uptime()
    families = ("4", "6") if args.family == "both" else (args.family,)
    rows: list[str] = []
    raw: list[str] = []
    journal = Journal().start()
    user = ensure_user()
    try:
        for count, rate in _runs(args.runs):
            for family in families:
                workdir = world_readable_dir("psbench-flood-")
                try:
                    with Lab("psbflood") as lab:
                        result = run_flood(lab, journal, user, workdir,
                                           count4=count if family == "4" else 0,
                                           count6=count if family == "6" else 0,
                                           rate=rate, scan_delay=args.scan_delay, settle_timeout=120,
                                           conf=SLOW_CONF if args.slow else SENSOR_CONF, slow_probes=args.slow)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                label = f"{count:,} @ {rate:,.0f}/s IPv{family}"
                rows.append(row(label, result))
                raw.append(f"- {label}: " + "; ".join(line.removeprefix("adminalert: ")
                                                       for line in result.admin_lines))
                print(rows[-1], flush=True)
    finally:
        journal.stop()
    text = (run_header(f"Decoy flood run {started} (issue 11, sensor side)", command, load_before,
                       f"Ban action: {ban_action()}")
            + "| flood (forged SYNs, one per source) | sent | real scanner: first probe -> ban | "
            "forged banned | sensor lines | says flood | sensor peak RSS | fail2ban CPU | fail2ban peak RSS |\n"
            "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\nThe sensor's admin lines:\n\n"
            + "\n".join(raw) + "\n")
    print(text)
    if not args.no_record:
        record(text, Path(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
