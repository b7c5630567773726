"""fail2ban with our jail pack inside the victim namespace, for the scan-to-ban figure.

Uses tests/e2e/f2b.py when the jail-pack helper provides it; otherwise starts
fail2ban-server the same way here: private socket, pidfile and database, a
copy of /etc/fail2ban (Debian's jail.d defaults removed) with our filter.d
and jail.d files added, a ``.local`` selecting the sensor's journal lines by
``_UID=`` (journald sets it; no systemd unit exists in the lab), short test
bantime, the lab's own addresses in ``ignoreip`` (other sessions' sensors run
as the same user and share the journal).  ``nft monitor`` in the victim
namespace timestamps the moment each address enters the ban set.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from lab import REPO_ROOT, Lab, wait_until

FALLBACK_JAIL = """\
[portsentry]
enabled   = true
filter    = portsentry-sensor
backend   = systemd
maxretry  = 1
findtime  = 600
bantime   = 600
banaction = nftables[type=allports]
protocol  = tcp,udp
"""


class NftMonitor:
    """``nft monitor`` in a namespace; remembers when each address was first added to a set."""

    def __init__(self, lab: Lab) -> None:
        self.added: dict[str, float] = {}
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


class Fail2ban:
    """A fail2ban-server with our jail pack in the victim namespace."""

    def __init__(self, lab: Lab, sensor_uid: int, ignoreip: str) -> None:
        self.lab = lab
        self.work = Path(tempfile.mkdtemp(prefix="psbench-f2b-", dir="/tmp"))
        self.conf = self.work / "etc"
        shutil.copytree("/etc/fail2ban", self.conf, symlinks=True)
        for old in (self.conf / "jail.d").iterdir():
            old.unlink()
        for sub in ("filter.d", "jail.d", "action.d"):
            for src in sorted((REPO_ROOT / "fail2ban" / sub).glob("*")):
                if src.is_file():
                    shutil.copy(src, self.conf / sub / src.name)
        self.pack_jail = any((self.conf / "jail.d").glob("*.conf"))
        if not self.pack_jail:
            (self.conf / "jail.d" / "portsentry.conf").write_text(FALLBACK_JAIL)
        (self.conf / "jail.d" / "zz-bench.local").write_text(
            f"[portsentry]\nenabled = true\nbackend = systemd\njournalmatch = _UID={sensor_uid}\n"
            f"ignoreip = 127.0.0.1/8 ::1 {ignoreip}\nbantime = 600\n")
        self.sock = self.work / "f2b.sock"
        (self.conf / "fail2ban.local").write_text(
            f"[Definition]\nloglevel = INFO\nlogtarget = {self.work / 'f2b.log'}\n"
            f"socket = {self.sock}\npidfile = {self.work / 'f2b.pid'}\n"
            f"dbfile = {self.work / 'f2b.sqlite3'}\n")
        self.proc: subprocess.Popen[Any] | None = None

    def client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """fail2ban-client against our server."""
        return self.lab.run_victim(["fail2ban-client", "-c", str(self.conf), "-s", str(self.sock), *args],
                                   timeout=30)

    def start(self) -> None:
        """Start the server in the foreground (tracked by PID); wait for the jail."""
        self.proc = self.lab.spawn_victim(["fail2ban-server", "-f", "-x", "-c", str(self.conf),
                                           "-s", str(self.sock), "-p", str(self.work / "f2b.pid")])
        ok = wait_until(lambda: self.client("status", "portsentry").returncode == 0
                        or (self.proc is not None and self.proc.poll() is not None), 60, step=0.5)
        if not ok or self.proc.poll() is not None:
            raise RuntimeError(f"fail2ban did not start:\n{self.log()[-3000:]}")

    def log(self) -> str:
        """fail2ban's own log."""
        try:
            return (self.work / "f2b.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        """Stop the server (by PID via the lab), remove our files."""
        if self.proc is not None and self.proc.poll() is None:
            self.client("stop")
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.work, ignore_errors=True)
