"""A private fail2ban-server with our jail pack, running inside the lab's victim namespace.

The config dir is Debian's pristine /etc/fail2ban (tests/pristine.py: the stock
includes common.conf, nftables.conf, never an admin's .local) minus the distribution's
enabled jails, plus our fail2ban/ pack, plus a test .local.
Socket, pidfile, database and log are the test's own, so nothing touches a system
fail2ban.  nftables rules land in the victim namespace only (the server runs there).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lab import Lab, kill_pid, run, wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT / "tests") not in sys.path:  # bench/ imports this module outside pytest
    sys.path.insert(0, str(REPO_ROOT / "tests"))
from pristine import copy_pristine  # noqa: E402

PACK = REPO_ROOT / "fail2ban"
JAIL = "portsentry"
TABLE = ("inet", "f2b-table")


def build_confdir(workdir: Path, jail_local: str) -> Path:
    """Pristine /etc/fail2ban without its enabled jails, our pack over it, and a jail .local."""
    confdir = copy_pristine(workdir / "fail2ban")
    for stale in (confdir / "jail.d").glob("*"):
        stale.unlink()
    (confdir / "jail.local").unlink(missing_ok=True)
    for sub in ("filter.d", "action.d", "jail.d"):
        for item in sorted((PACK / sub).glob("*")):
            shutil.copy(item, confdir / sub / item.name)
    (confdir / "jail.d" / "portsentry.local").write_text(jail_local)
    return confdir


class Fail2Ban:
    """fail2ban-server in the victim namespace; fail2ban-client against its private socket."""

    def __init__(self, lab: Lab, workdir: Path, jail_local: str, loglevel: str = "INFO") -> None:
        self.lab = lab
        self.workdir = workdir
        self.confdir = build_confdir(workdir, jail_local)
        self.socket = workdir / "f2b.sock"
        self.pidfile = workdir / "f2b.pid"
        self.dbfile = workdir / "f2b.sqlite3"
        self.logfile = workdir / "f2b.log"
        (self.confdir / "fail2ban.local").write_text(
            "[Definition]\n"
            f"socket = {self.socket}\npidfile = {self.pidfile}\n"
            f"dbfile = {self.dbfile}\nlogtarget = {self.logfile}\nloglevel = {loglevel}\n")
        self.proc: subprocess.Popen[Any] | None = None

    # -- lifecycle ---------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        """Start the server in the foreground (tracked by PID) and wait for jail portsentry."""
        self.proc = self.lab.spawn_victim(
            ["fail2ban-server", "-f", "-x", "-c", str(self.confdir), "-s", str(self.socket),
             "-p", str(self.pidfile), "--logtarget", str(self.logfile)])

        def up() -> bool:
            return self.proc is None or self.proc.poll() is not None or \
                self.client("status", JAIL, check=False).returncode == 0
        wait_until(up, timeout, step=0.2)
        if self.proc.poll() is not None or self.client("status", JAIL, check=False).returncode != 0:
            raise RuntimeError(f"fail2ban-server did not start jail {JAIL}:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server cleanly (fail2ban-client stop), by PID if it does not go."""
        if self.proc is None:
            return
        self.client("stop", check=False, timeout=30)
        if not wait_until(lambda: self.proc is not None and self.proc.poll() is not None, 15):
            kill_pid(self.proc)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again with the same database."""
        self.stop()
        self.start()

    # -- queries -----------------------------------------------------------
    def client(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """fail2ban-client against our socket (a unix socket: works from any namespace)."""
        return run(["fail2ban-client", "-c", str(self.confdir), "-s", str(self.socket), *args],
                   check=check, timeout=timeout)

    def banned(self, jail: str = JAIL) -> list[str]:
        """Addresses the jail has banned now."""
        out = self.client("get", jail, "banned").stdout.strip()
        try:
            return [str(ip) for ip in json.loads(out.replace("'", '"'))]
        except ValueError:
            return []

    def status(self, jail: str = JAIL) -> str:
        """``fail2ban-client status <jail>`` as text."""
        return self.client("status", jail).stdout

    def nft_set(self, family: int = 4) -> set[str]:
        """Elements of the jail's nft set in the victim namespace (empty if none yet)."""
        name = f"addr-set-{JAIL}" if family == 4 else f"addr6-set-{JAIL}"
        out = self.lab.run_victim(["nft", "-j", "list", "set", *TABLE, name]).stdout
        if not out.strip():
            return set()
        elements: set[str] = set()
        for item in json.loads(out).get("nftables", []):
            for elem in item.get("set", {}).get("elem", []):
                elements.add(elem if isinstance(elem, str) else json.dumps(elem))
        return elements

    def wait_in_set(self, address: str, present: bool = True, timeout: float = 10) -> float:
        """Wait until the address is (or is no longer) in the nft set; return the seconds waited."""
        family = 6 if ":" in address else 4
        start = time.monotonic()
        if not wait_until(lambda: (address in self.nft_set(family)) == present, timeout, step=0.05):
            state = "in" if present else "out of"
            raise AssertionError(f"{address} not {state} the nft set after {timeout} s:\n"
                                 f"{self.log_tail()}")
        return time.monotonic() - start

    def log_text(self) -> str:
        """The server's log so far."""
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server's log (for failure messages)."""
        return "\n".join(self.log_text().splitlines()[-lines:])
