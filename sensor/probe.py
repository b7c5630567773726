"""The event every watcher reports, and the fields an alert shares with it.

A :class:`Probe` is one packet or connection that touched a watched port: the
bound tripwires (sensor/listeners.py) and the raw capture make them, the ignore
list and the detector (sensor/detector.py) consume them.  An alert
(sensor/alert.py) says the same seven things about the probe it reports, so
both are built on :class:`Touch`, which declares those fields once.  Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Touch:
    """Who touched which port, how, and whether the source is proven (a completed handshake)."""

    src: str
    dst: str
    proto: str
    dport: int
    scan: str
    mode: str
    verified: bool


@dataclass(frozen=True)
class Probe(Touch):
    """One packet or connection that touched a watched port (``flags``: unusual TCP flags, named)."""

    flags: str = ""
