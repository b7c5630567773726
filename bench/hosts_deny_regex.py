"""migrate-bans' hosts.deny matching on a hostile line: ``ALL:`` followed by N spaces.

Run: ``python3 bench/hosts_deny_regex.py [N ...]`` (from the repository root; no privileges).
Issue 12 item 10: the old pattern (``\\s*:\\s*\\s*``, two whitespace loops in a row) backtracked in
O(n^2): 8.4 s at 20,000 spaces.  Times the template's regex alone (no line-length cap) and
:func:`sensor.migration.leftovers.parse_hosts_deny` (which also skips lines over 1024 characters).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor.migration import leftovers


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 200_000]
    pattern = leftovers._template_regex(leftovers.DEFAULT_HOSTS_DENY[0])
    print(f"pattern: {pattern.pattern}")
    for size in sizes:
        line = "ALL:" + " " * size
        start = time.perf_counter()
        pattern.match(line)
        regex = time.perf_counter() - start
        start = time.perf_counter()
        leftovers.parse_hosts_deny(line + "\n", {"203.0.113.10"})
        parse = time.perf_counter() - start
        print(f"ALL: + {size} spaces: regex {regex * 1000:.2f} ms, parse_hosts_deny {parse * 1000:.2f} ms")


if __name__ == "__main__":
    main()
