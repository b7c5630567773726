"""Everything ``migrate-bans`` touches on the host, behind one interface (:class:`System`).

:class:`HostSystem` is the real system with files under a root directory; tests
pass sample trees and a fake runner instead.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sensor.atomicfile import write_atomic
from sensor.ignore import Network, local_networks

COMMAND_TIMEOUT = 30


def stamp(now: float) -> str:
    """Timestamp used in backup and archive names."""
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(now))


@dataclass(frozen=True)
class Result:
    """What a command returned."""

    rc: int
    out: str
    err: str


class System(Protocol):
    """Everything migrate-bans touches; files are host paths resolved under a root."""

    def run(self, argv: Sequence[str]) -> Result:
        """Run a command (rc 127 if it is not installed)."""

    def read(self, path: str) -> str | None:
        """A file's text, or None if it does not exist."""

    def write(self, path: str, text: str, backup_suffix: str) -> str:
        """Replace a file atomically, keeping its mode; returns the backup's path."""

    def rename(self, path: str, new_path: str) -> None:
        """Rename a file."""

    def local_networks(self) -> tuple[Network, ...]:
        """This host's own addresses."""

    def pids(self, program: str) -> list[int]:
        """Processes running ``program``."""

    def now(self) -> float:
        """Current time."""


class HostSystem:
    """The real system, with files under ``root``."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, path: str) -> str:
        """Host path -> path under the root."""
        return os.path.join(self.root, path.lstrip("/"))

    def run(self, argv: Sequence[str]) -> Result:
        """Run with a timeout; a missing program is rc 127."""
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                  check=False)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: not installed")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {COMMAND_TIMEOUT} s")
        return Result(done.returncode, done.stdout, done.stderr)

    def read(self, path: str) -> str | None:
        """Read text (undecodable bytes replaced); None if missing."""
        try:
            with open(self.path(path), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, text: str, backup_suffix: str) -> str:
        """Back up, then replace atomically with the same mode."""
        return write_atomic(self.path(path), text, backup_suffix=backup_suffix)

    def rename(self, path: str, new_path: str) -> None:
        """Rename under the root."""
        os.rename(self.path(path), self.path(new_path))

    def local_networks(self) -> tuple[Network, ...]:
        """Addresses of this network namespace."""
        return local_networks()

    def pids(self, program: str) -> list[int]:
        """PIDs whose command name (/proc/PID/comm) is ``program``."""
        found: list[int] = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as handle:
                    if handle.read().strip() == program[:15]:
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def now(self) -> float:
        """Wall-clock time."""
        return time.time()
