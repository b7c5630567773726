"""When does an address enter the ban set?  ``nft monitor`` in the victim namespace says.

fail2ban itself is started by tests/e2e/f2b.py (the jail pack's own e2e
helper); this only timestamps each ``add element`` event as it happens,
which is cheaper and more precise than polling ``nft list set``.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time

from lab import Lab, kill_pid


class NftMonitor:
    """``nft monitor`` in a namespace; remembers when each address was first added to a set."""

    def __init__(self, lab: Lab) -> None:
        self.added: dict[str, float] = {}
        self.lines: list[tuple[float, str]] = []
        self.proc = lab.spawn_victim(["nft", "monitor", "elements"], stdout=subprocess.PIPE, text=True,
                                     bufsize=1)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.time()
            if not line.startswith("add element"):
                continue
            body = line.split("{", 1)[-1]
            for addr in re.findall(r"[0-9a-fA-F:.]{3,}", body):
                self.added.setdefault(addr, now)
                self.lines.append((now, line.strip()))

    def close(self) -> None:
        """Stop nft monitor (by PID)."""
        kill_pid(self.proc)
