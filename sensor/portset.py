"""The distinct ports one window saw: a small set, then an 8 KiB bitmap (pure).

Shared by the per-source window (sensor/detector.py) and the per-prefix window
(sensor/prefixwatch.py): a window that saw up to SMALL ports costs a small set; one
that saw more (a full scan) switches to a fixed 65,536-bit bitmap, so no window grows
past 8 KiB however many ports it is sent.
"""

from __future__ import annotations

SMALL = 64  # above this many ports a window switches to a bitmap


class PortSet:
    """Distinct ports, counted."""

    __slots__ = ("small", "bitmap", "count")

    def __init__(self) -> None:
        self.small: set[int] = set()
        self.bitmap: bytearray | None = None
        self.count = 0

    def add(self, port: int) -> bool:
        """Record a port; True if it is new."""
        if self.bitmap is None:
            if port in self.small:
                return False
            self.small.add(port)
            if len(self.small) > SMALL:
                self.bitmap = bytearray(8192)
                for p in self.small:
                    self.bitmap[p >> 3] |= 1 << (p & 7)
                self.small = set()
        else:
            byte, bit = port >> 3, 1 << (port & 7)
            if self.bitmap[byte] & bit:
                return False
            self.bitmap[byte] |= bit
        self.count += 1
        return True
