"""How long until the whole fleet blocks a scanner?  First probe on host A -> blocked on host B.

The fleet of tests/e2e/test_crowdsec.py (tests/e2e/crowdsec.py): host A runs the
CrowdSec LAPI, an agent, the sensor and the nftables bouncer; host B an agent, the
sensor and the bouncer (1 s update interval, the shipped bouncer's default is 10 s).
Each round uses a scanner address never seen before (the scenario's blackhole is
per source): it sends one SYN to A, then tries to connect to B's service every
0.1 s until that fails.  Rounds, namespaces and processes are bounded and cleaned up.

Usage (root): .venv/bin/python bench/crowdsec_fleet.py [--rounds 10] [--no-record]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO / "tests" / "e2e"), str(REPO / "tests"), str(REPO)]

from lab import VICTIM4, Journal, Lab, ensure_user, wait_until  # noqa: E402
from report import git_head, machine  # noqa: E402

from crowdsec import fleet  # noqa: E402


def one_round(started: object, lab: Lab, index: int) -> float:
    """Seconds from the scanner's first probe of A until B refuses it."""
    ns = lab.add_attacker(f"s{index}", f"192.0.2.{20 + index}", f"2001:db8::{20 + index:x}")
    assert started.connects(ns), f"round {index}: B unreachable before the scan"  # type: ignore[attr-defined]
    start = time.monotonic()
    lab.nmap(["-sS", "-p", "23", "--max-retries", "0", VICTIM4], ns=ns, timeout=60)
    blocked = wait_until(lambda: not started.connects(ns, timeout=0.3), 30, 0.1)  # type: ignore[attr-defined]
    if not blocked:
        raise RuntimeError(f"round {index}: B did not block the scanner within 30 s")
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    samples: list[float] = []
    journal = Journal().start()
    try:
        with Lab("psbf") as lab, fleet(lab, ensure_user()) as started:
            for index in range(min(args.rounds, 60)):
                samples.append(round(one_round(started, lab, index), 3))
                print(f"round {index + 1}: {samples[-1]:.3f} s", flush=True)
    finally:
        journal.stop()
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    row = (f"| first probe on A -> blocked on B (CrowdSec LAPI on A, agents + nftables bouncers on A and B, "
           f"bouncer update 1 s) | median {statistics.median(samples):.2f} s, p95 {p95:.2f} s, "
           f"max {max(samples):.2f} s (n={len(samples)}) |")
    print(row)
    if not args.no_record:
        command = ".venv/bin/python bench/crowdsec_fleet.py " + shlex.join(sys.argv[1:])
        with open(BENCH / "RESULTS.md", "a") as out:
            out.write(f"\n## CrowdSec fleet ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
                      f"Command: `{command.strip()}` (tree {git_head()}; {machine()})\n\n"
                      f"| measure | result |\n|---|---|\n{row}\n\n"
                      f"Samples (s): `{json.dumps(samples)}`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
