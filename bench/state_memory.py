"""Memory per tracked source (STATE_MAX_SOURCES): what the detector keeps for one (source, protocol).

Run: ``python3 bench/state_memory.py`` (from the repository root; no privileges, no network).
A *quiet* source touched one port; a *busy* one touched more than 64 distinct ports, so its window
switched to an 8 KiB port bitmap (sensor/detector.py).  Measured with tracemalloc over
``--sources`` windows each, through the real Detector; the figure is bytes per window, table
entry and probes included.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sensor.detector import Detector
from sensor.probe import Probe
from sensor.settings import DetectorSettings


def per_window(sources: int, ports: int) -> float:
    """Bytes per window when ``sources`` sources each touch ``ports`` distinct ports."""
    detector = Detector(DetectorSettings(max_sources=sources))
    base = int(ipaddress.ip_address("198.18.0.0"))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(sources):
        src = str(ipaddress.ip_address(base + index))
        for port in range(1, ports + 1):
            detector.observe(Probe(src, "192.0.2.1", "tcp", port, "syn", "atcp", True, "S"), 0.0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(detector) == sources
    return (after - before) / sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4096)
    args = parser.parse_args()
    quiet, busy = per_window(args.sources, 1), per_window(args.sources, 65)
    print(f"{args.sources} windows, Python {sys.version.split()[0]}")
    print(f"quiet source (1 port):   {quiet:8.0f} bytes per window")
    print(f"busy source (65+ ports): {busy:8.0f} bytes per window")
    for limit in (4096, 65536):
        print(f"STATE_MAX_SOURCES={limit}: at most {busy * limit / 2**20:.0f} MiB of windows (all busy)")


if __name__ == "__main__":
    main()
