"""Side-by-side benchmark: portsentry-sensor against Debian's PortSentry 1.2, in one run.

Usage (root): ``.venv/bin/python bench/run.py [--quick] [--only SECTION,...] [--no-record]``

Builds the e2e lab (tests/e2e/lab.py: victim and attacker namespaces, a
standalone journald if none runs), puts a real HTTP service on the victim's
port 80, and measures both sensors in turn, each alone in the victim:

- grid     modes x nmap scan types (-sS -sT -sF -sN -sX -sU), IPv4 and IPv6
- latency  first probe on the wire -> alert in the journal (ours) / on /dev/log (PortSentry)
- lines    log lines for one 1,024-port and one 65,535-port SYN scan
- cpu      CPU seconds while >= 20,000 legitimate HTTP requests hit the real service
- memory   idle RSS; peak RSS while >= 100,000 spoofed sources probe watched ports
- ban      scan-to-ban through fail2ban with our jail pack (ours only)

Prints one Markdown table and appends it, with the command and the machine's
load, to bench/RESULTS.md.  Every loop is bounded; namespaces and processes
are removed by PID at the end.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests" / "e2e"), str(REPO)]

from lab import Journal, Lab  # noqa: E402
from report import Results, notes, record, run_header, table, targets, uptime  # noqa: E402
from sections import SECTIONS  # noqa: E402
from sensors import JournalWatch, portsentry_root  # noqa: E402
from world import PREFIX, Settings, World, build_lab  # noqa: E402

from sensor.alert import MESSAGE_ID  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the sections, print and record the table."""
    parser = argparse.ArgumentParser(description="portsentry-sensor vs PortSentry 1.2 (see bench/README.md)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for iterating (not a result)")
    parser.add_argument("--only", default="", help=f"comma list of sections: {','.join(SECTIONS)}")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--results", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py needs root (network namespaces, raw sockets)", file=sys.stderr)
        return 2
    settings = Settings()
    if args.quick:
        settings = Settings(samples=5, http_requests=2_000, spoof4=10_000, spoof6=5_000,
                            ban_samples=3, full_scan=False)
    chosen = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    command = shlex.join([".venv/bin/python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])])
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = uptime()
    results = Results()
    ps_root = portsentry_root()
    journal = Journal().start()
    failures: list[str] = []
    try:
        with Lab(PREFIX) as lab:
            build_lab(lab)
            watch = JournalWatch(str(MESSAGE_ID))
            world = World(lab, watch)
            try:
                for name in chosen:
                    print(f"== {name}", flush=True)
                    begun = time.monotonic()
                    try:
                        SECTIONS[name](world, results, settings)
                    except Exception as exc:
                        traceback.print_exc()
                        failures.append(f"section {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
                    print(f"   ({time.monotonic() - begun:.0f} s)", flush=True)
            finally:
                world.close()
                watch.close()
    finally:
        journal.stop()
    title = f"Run {started}{' (--quick: sizes reduced, not a result)' if args.quick else ''}"
    text = (run_header(title, command, load_before,
                       f"PortSentry: Debian package portsentry 1.2, unpacked in {ps_root}")
            + f"{table(results)}\n\n{targets(results)}\n\n{notes(results)}\n")
    if failures:
        text += "\n" + "\n".join(f"- {f}" for f in failures) + "\n"
    if results.raw:
        text += ("\n<details><summary>raw samples (ms / s / kB)</summary>\n\n```json\n"
                 + json.dumps(results.raw) + "\n```\n</details>\n")
    print(text)
    if not args.no_record:
        record(text, Path(args.results))
        print(f"appended to {args.results}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
