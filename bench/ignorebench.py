"""Ignore-list speed (issue 12, item 7): build and lookup with 100,000 entries.

Targets: build <= 0.5 s, lookup <= 5 us.  Runs anywhere (no root, no network):

    .venv/bin/python bench/ignorebench.py            # 100,000 entries
    .venv/bin/python bench/ignorebench.py --entries 20000

Entries (fixed seed): 50 % single IPv4 addresses, 20 % IPv4 CIDRs /8-/31, 20 %
single IPv6 addresses, 10 % IPv6 CIDRs /16-/127; a second list has CIDRs of
every prefix length (0 excluded) to show that lookup does not grow with the
number of distinct lengths.  "parse" is :func:`sensor.ignore.parse_ignore` on
the file text (done once per change of the file), "build" is
:meth:`IgnoreList.build` with this host's addresses (once per change of the
file or of the addresses), "lookup" is ``address in ignore`` with the address as
the string the listeners and the capture hand over, half hits, half misses.
Prints one Markdown table; the median of 5 builds and of 5 rounds of 200,000
lookups, in CPU time of this process (time.process_time: the machine is shared,
and waiting for a core is not the ignore list's cost; wall time is printed too).
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sensor.ignore import IgnoreList, local_networks, parse_ignore


def realistic(count: int, rng: random.Random) -> list[str]:
    """The usual mix: mostly single addresses, some networks."""
    lines = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.5:
            lines.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        elif kind < 0.7:
            lines.append(f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randint(8, 31)}")
        elif kind < 0.9:
            lines.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
        else:
            lines.append(f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{rng.randint(16, 127)}")
    return lines


def every_length(count: int, rng: random.Random) -> list[str]:
    """CIDRs of every prefix length, IPv4 /1-/32 and IPv6 /1-/128 in turn (deep ones mostly)."""
    lines = []
    for i in range(count):
        if i % 2:
            lines.append(f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{16 + i % 17}")
        else:
            lines.append(f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{1 + i % 128}")
    return lines


def probes(lines: list[str], count: int, rng: random.Random) -> list[str]:
    """Half entries' own addresses (hits), half random addresses (almost all misses)."""
    result = []
    for i in range(count):
        if i % 2:
            result.append(rng.choice(lines).split("/", 1)[0])
        elif i % 4:
            result.append(str(ipaddress.IPv4Address(rng.getrandbits(32))))
        else:
            result.append(str(ipaddress.IPv6Address(rng.getrandbits(128))))
    return result


def measure(name: str, lines: list[str], lookups: int, rng: random.Random) -> str:
    text = "\n".join(lines) + "\n"
    start = time.process_time()
    networks = parse_ignore(text, "bench")
    parse_s = time.process_time() - start
    local = local_networks()
    builds, walls = [], []
    ignore = IgnoreList.build(networks, local)
    for _ in range(5):
        start, wall = time.process_time(), time.perf_counter()
        ignore = IgnoreList.build(networks, local)
        builds.append(time.process_time() - start)
        walls.append(time.perf_counter() - wall)
    asked = probes(lines, lookups, rng)
    rounds, wall_rounds = [], []
    hits = 0
    for _ in range(5):
        start, wall = time.process_time(), time.perf_counter()
        hits = sum(1 for address in asked if address in ignore)
        rounds.append((time.process_time() - start) / len(asked) * 1e6)
        wall_rounds.append((time.perf_counter() - wall) / len(asked) * 1e6)
    build_s = statistics.median(builds)
    lookup_us = statistics.median(rounds)
    verdict = "met" if build_s <= 0.5 and lookup_us <= 5 else "MISSED"
    return (f"| {name}: {len(lines):,} entries ({len(ignore.networks):,} kept) | {parse_s:.3f} s | "
            f"{build_s:.3f} s (wall {statistics.median(walls):.3f} s) | {lookup_us:.2f} us "
            f"(wall {statistics.median(wall_rounds):.2f} us; {hits:,} hits of {len(asked):,}) | {verdict} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    args = parser.parse_args()
    rng = random.Random(12)
    print(f"Python {sys.version.split()[0]}")
    print("| list | parse (file text) | build (median of 5) | lookup (median per address) | "
          "target: build <= 0.5 s, lookup <= 5 us |")
    print("|---|---|---|---|---|")
    print(measure("usual mix", realistic(args.entries, rng), args.lookups, rng))
    print(measure("every prefix length", every_length(args.entries, rng), args.lookups, rng))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
