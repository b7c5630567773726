"""The detector's knobs (from Config): one record for the per-source and the per-prefix windows.

Its own module so that sensor/detector.py and sensor/prefixwatch.py (which the
detector uses) both read it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetectorSettings:
    """The knobs of the detector (from Config)."""

    scan_trigger: int = 0
    scan_window: float = 300.0
    summary_interval: float = 30.0
    summary_max_lines: int = 2
    max_sources: int = 4096
    flood_sources: int = 20         # new unverified sources per second (the config default); 0: no guard
    flood_ports: int = 5            # during a flood, more distinct ports than this to alert
    probation_slots: int = 1 << 20  # the probation table (rounded up to a power of two)
    ipv6_prefix: int = 64           # IPV6_PREFIX: rotating addresses of one /64 are one actor (128: off)
    ipv4_prefix: int = 32           # IPV4_PREFIX (32: off)
    prefix_addresses: int = 2       # PREFIX_ADDRESSES (sensor/prefixwatch.py)

    def prefix_length(self, six: bool) -> int | None:
        """The prefix length for a family, or None when that family is keyed per address."""
        length = self.ipv6_prefix if six else self.ipv4_prefix
        return None if length >= (128 if six else 32) else length
