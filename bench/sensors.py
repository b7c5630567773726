"""The two contenders, behind one small interface: our sensor and Debian's PortSentry 1.2.

Both run inside the lab's victim namespace.  Our sensor logs to the shared
journald (read back here with python3-systemd's ``Reader.wait()``), except in
the spoofed flood where it logs to a journald of its own in a private mount
namespace (read back with ``journalctl -D``), so that 150,000 alerts never
land in the journal other test sessions read.
PortSentry runs as root (as Debian runs it) in a private mount namespace:
``/etc`` is an overlay whose upper layer holds our portsentry.conf (its path
is compiled in), ``/dev`` is a small tmpfs whose ``log`` is our unix datagram
socket.  Nothing is installed or written outside the bench's temporary
directory.  PortSentry daemonizes, so its PIDs are found in the victim's
network namespace and killed by PID at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import REPO_ROOT, SYSTEM_PYTHON, Lab, NotifySocket, ensure_user, setpriv_args, wait_until

PS_CACHE = Path("/tmp/portsentry-bench-cache")
PS_CANDIDATES = (PS_CACHE / "root", Path("/tmp/ps"))
MESSAGE_ID_HEX = ""  # filled by run.py from sensor.alert.MESSAGE_ID


@dataclass
class Line:
    """One log line as the harness saw it: when (epoch seconds), the text, the source address."""

    at: float
    text: str
    src: str
    pid: int = 0
    fields: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------
# Log collectors.

class SyslogSocket:
    """A unix datagram socket standing in for /dev/log; every datagram is one line."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.raw: list[tuple[float, bytes]] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
        self._sock.bind(self.path)
        os.chmod(self.path, 0o666)
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        recv, now, raw = self._sock.recv, time.time, self.raw
        while not self._closed:
            try:
                data = recv(8192)
            except TimeoutError:
                continue
            except OSError:
                return
            raw.append((now(), data))

    def lines(self, start: int = 0) -> list[tuple[float, str]]:
        """Lines received since index ``start``."""
        return [(at, data.decode("utf-8", "replace")) for at, data in self.raw[start:]]

    def mark(self) -> int:
        """An index to count from."""
        return len(self.raw)

    def close(self) -> None:
        """Stop collecting."""
        self._closed = True
        self._thread.join(2)
        self._sock.close()


class JournalWatch:
    """Collects our attack alerts from the journal as they arrive (Reader.wait in a thread)."""

    def __init__(self, message_id: str) -> None:
        from systemd import journal
        self.entries: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = journal.Reader(converters={"__REALTIME_TIMESTAMP": int})
        self._reader.add_match(MESSAGE_ID=message_id)
        self._reader.seek_tail()
        self._reader.get_previous()
        self._closed = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed:
            self._reader.wait(200_000)
            batch = list(self._reader)
            if batch:
                with self._cond:
                    self.entries.extend(batch)
                    self._cond.notify_all()

    def lines(self, pids: Sequence[int], start: int = 0) -> list[Line]:
        """Alerts of these PIDs since index ``start``."""
        with self._cond:
            found = self.entries[start:]
        return [Line(e["__REALTIME_TIMESTAMP"] / 1e6, e.get("MESSAGE", ""), e.get("PORTSENTRY_SRC", ""),
                     int(e.get("_PID", 0)), e) for e in found if int(e.get("_PID", 0)) in pids]

    def mark(self) -> int:
        """An index to count from."""
        with self._cond:
            return len(self.entries)

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds (re-checked on every new batch)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self) -> None:
        """Stop collecting."""
        self._closed = True
        self._thread.join(2)


# --------------------------------------------------------------------------
# Private mount namespace.

def private_mounts_script(work: Path, syslog_path: str, overlay_etc: bool) -> str:
    """Shell lines: a tmpfs /dev whose ``log`` is our socket, optionally an overlay /etc."""
    lines = [
        "set -e",
        f"mount -t tmpfs -o mode=755,size=1m benchdev {shlex.quote(str(work / 'dev'))}",
        f"cd {shlex.quote(str(work / 'dev'))}",
        "mknod -m 666 null c 1 3; mknod -m 666 zero c 1 5",
        "mknod -m 444 random c 1 8; mknod -m 444 urandom c 1 9",
        f"ln -s {shlex.quote(syslog_path)} log",
        "cd /",
        f"mount --bind {shlex.quote(str(work / 'dev'))} /dev",
    ]
    if overlay_etc:
        lines.append(f"mount -t overlay benchetc -o lowerdir=/etc,upperdir={work}/etc-up,"
                     f"workdir={work}/etc-work /etc")
    return "\n".join(lines)


def private_journald_script(work: Path) -> str:
    """Shell lines: a journald of our own (sockets on a tmpfs, files in work/jrun) for this mount ns."""
    return "\n".join([
        "set -e",
        "mount -t tmpfs -o mode=755,size=16m benchjsock /run/systemd/journal",
        f"mount --bind {shlex.quote(str(work / 'jrun'))} /run/log/journal",
        f"mount --bind {shlex.quote(str(work / 'jvar'))} /var/log/journal",
        # ip netns exec mounts a fresh /sys without cgroups; journald exits without one.
        "mountpoint -q /sys/fs/cgroup || mount -t cgroup2 benchcg /sys/fs/cgroup",
        "/lib/systemd/systemd-journald </dev/null >/dev/null 2>&1 &",
        f"echo $! > {shlex.quote(str(work / 'journald.pid'))}",
        "i=0; while [ ! -S /run/systemd/journal/socket ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done",
    ])


def netns_inode(name: str) -> int:
    """The inode of a named network namespace."""
    return os.stat(f"/run/netns/{name}").st_ino


def pids_named(comm: str, netns: str) -> list[int]:
    """PIDs whose comm is ``comm`` living in network namespace ``netns``."""
    want = netns_inode(netns)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != comm:
                continue
            if os.stat(f"/proc/{entry}/ns/net").st_ino != want:
                continue
        except OSError:
            continue
        found.append(int(entry))
    return sorted(found)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), in seconds (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ns(pid: int) -> int:
    """Time on CPU of every live thread of a process, in ns (/proc/PID/task/*/schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def memory_kb(pid: int, key: str) -> int:
    """A ``Vm*`` line of /proc/PID/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def alive(pid: int) -> bool:
    """True if the PID exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL, each PID we started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if wait_until(lambda: not any(alive(p) for p in pids), timeout):
            return


# --------------------------------------------------------------------------
# Debian's PortSentry 1.2.

def portsentry_root() -> Path:
    """A directory holding the unpacked Debian package (downloaded once if needed)."""
    for root in PS_CANDIDATES:
        if (root / "usr/sbin/portsentry").exists() and (root / "etc/portsentry/portsentry.conf").exists():
            return root
    PS_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "portsentry"], cwd=PS_CACHE, check=True, timeout=300)
    deb = sorted(PS_CACHE.glob("portsentry_*.deb"))[-1]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(PS_CACHE / "root")], check=True, timeout=60)
    return PS_CACHE / "root"


def portsentry_version(root: Path) -> str:
    """The package version, from its changelog or the .deb name."""
    debs = sorted(PS_CACHE.glob("portsentry_*.deb"))
    if debs:
        return debs[-1].name.split("_")[1]
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "portsentry"], capture_output=True,
                         text=True, check=False).stdout
    return out or "1.2 (Debian 12)"


def set_keys(text: str, values: dict[str, str]) -> str:
    """Rewrite (or append) ``KEY="value"`` lines of a PortSentry config."""
    for key, value in values.items():
        line = f'{key}="{value}"'
        text, n = re.subn(rf"^{key}\s*=.*$", line, text, flags=re.M)
        if n == 0:
            text += f"\n{line}\n"
    return text


class PortSentry:
    """Debian's portsentry, one daemon per mode, in the victim namespace."""

    name = "portsentry 1.2"

    def __init__(self, lab: Lab, own_addresses: Sequence[str]) -> None:
        self.lab = lab
        self.root = portsentry_root()
        self.binary = self.root / "usr/sbin/portsentry"
        self.work = Path(tempfile.mkdtemp(prefix="psbench-ps-", dir="/tmp"))
        self.syslog = SyslogSocket(self.work / "log.sock")
        self.pids: list[int] = []
        self.modes: list[str] = []
        self.own = list(own_addresses)

    def _write_config(self, advanced_tcp: int, advanced_udp: int) -> None:
        for sub in ("dev", "etc-up/portsentry", "etc-work", "var"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.work / "etc-work", ignore_errors=True)
        (self.work / "etc-work").mkdir()
        stock = (self.root / "etc/portsentry/portsentry.conf").read_text()
        conf = set_keys(stock, {
            "BLOCK_TCP": "0", "BLOCK_UDP": "0", "SCAN_TRIGGER": "0", "RESOLVE_HOST": "0",
            "ADVANCED_PORTS_TCP": str(advanced_tcp), "ADVANCED_PORTS_UDP": str(advanced_udp),
            "IGNORE_FILE": str(self.work / "var/portsentry.ignore"),
            "HISTORY_FILE": str(self.work / "var/portsentry.history"),
            "BLOCKED_FILE": str(self.work / "var/portsentry.blocked"),
        })
        (self.work / "etc-up/portsentry/portsentry.conf").write_text(conf)
        ignore = (self.root / "etc/portsentry/portsentry.ignore.static").read_text()
        (self.work / "var/portsentry.ignore").write_text(ignore + "".join(f"{a}\n" for a in self.own))

    def start(self, modes: Sequence[str], advanced_tcp: int = 1024, advanced_udp: int = 1024) -> None:
        """Start one daemon per mode (``atcp``, ``audp``, ``tcp``...); wait until each says it is active."""
        self._write_config(advanced_tcp, advanced_udp)
        mark = self.syslog.mark()
        script = private_mounts_script(self.work, self.syslog.path, overlay_etc=True)
        script += "\n" + "\n".join(f"{shlex.quote(str(self.binary))} -{m}" for m in modes)
        before = set(pids_named("portsentry", self.lab.victim))
        self.lab.run_victim(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            check=True, timeout=30)
        self.modes = list(modes)

        def ready() -> bool:
            text = "".join(t for _, t in self.syslog.lines(mark))
            return text.count("PortSentry is now active") >= len(modes) or "Aborting" in text

        ok = wait_until(ready, 20, step=0.1)
        self.pids = [p for p in pids_named("portsentry", self.lab.victim) if p not in before]
        if not ok or len(self.pids) != len(modes):
            log = "\n".join(t for _, t in self.syslog.lines(mark))
            self.stop()
            raise RuntimeError(f"portsentry {modes} did not start (pids {self.pids}):\n{log}")

    def stop(self) -> None:
        """Kill our daemons by PID."""
        kill_pids(self.pids)
        self.pids = []

    def mark(self) -> int:
        """Index into the syslog lines."""
        return self.syslog.mark()

    def lines(self, start: int = 0) -> list[Line]:
        """Lines since ``start`` (every line of the daemons; ``src`` = first address named)."""
        found = []
        for at, text in self.syslog.lines(start):
            match = re.search(r"host: ([0-9a-fA-F.:]+)/", text) or re.search(r"Host: ([0-9a-fA-F.:]+)", text)
            found.append(Line(at, text, match.group(1) if match else ""))
        return found

    def close(self) -> None:
        """Stop, close the socket, remove our files."""
        self.stop()
        self.syslog.close()
        shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------
# Our sensor.

OUR_MODES = {
    "tcp": ('TCP_MODE="tcp"', 'UDP_MODE="off"'),
    "udp": ('TCP_MODE="off"', 'UDP_MODE="udp"'),
    "stcp": ('TCP_MODE="stcp"', 'UDP_MODE="off"'),
    "sudp": ('TCP_MODE="off"', 'UDP_MODE="sudp"'),
    "atcp": ('TCP_MODE="atcp"', 'UDP_MODE="off"'),
    "audp": ('TCP_MODE="off"', 'UDP_MODE="audp"'),
}


def our_config(modes: Sequence[str], tcp_ports: str, udp_ports: str, advanced_tcp: int,
               advanced_udp: int, log_target: str, extra: str = "") -> str:
    """A config in the shipped defaults' spirit (SCAN_TRIGGER 0, window 300 s, 2 summaries)."""
    tcp = [m for m in modes if m in ("tcp", "stcp", "atcp")]
    udp = [m for m in modes if m in ("udp", "sudp", "audp")]
    return "\n".join([
        "# portsentry-sensor bench",
        f'TCP_MODE="{",".join(tcp) or "off"}"',
        f'UDP_MODE="{",".join(udp) or "off"}"',
        f'TCP_PORTS="{tcp_ports}"', f'UDP_PORTS="{udp_ports}"',
        f'ADVANCED_PORTS_TCP="{advanced_tcp}"', f'ADVANCED_PORTS_UDP="{advanced_udp}"',
        'ADVANCED_EXCLUDE_TCP="113,139"', 'ADVANCED_EXCLUDE_UDP="520,138,137,67"',
        'SCAN_TRIGGER="0"', f'LOG_TARGET="{log_target}"', extra, ""])


class OurSensor:
    """``python3 -m sensor run`` as the sensor user with the two capabilities, in the victim."""

    name = "portsentry-sensor"

    def __init__(self, lab: Lab, journal: JournalWatch) -> None:
        self.lab = lab
        self.journal = journal
        self.user = ensure_user()
        self.work = Path(tempfile.mkdtemp(prefix="psbench-ours-", dir="/tmp"))
        self.work.chmod(0o755)
        (self.work / "notify").mkdir(mode=0o777)
        (self.work / "notify").chmod(0o777)
        self.notify = NotifySocket(self.work / "notify")
        self.syslog = SyslogSocket(self.work / "log.sock")
        self.proc: subprocess.Popen[Any] | None = None
        self.pids: list[int] = []
        self.log_target = "journal"
        self.message_id = ""

    def start(self, modes: Sequence[str], tcp_ports: str, udp_ports: str, advanced_tcp: int = 1024,
              advanced_udp: int = 1024, log_target: str = "journal", extra: str = "") -> None:
        """Start; wait for READY=1.

        ``log_target="syslog"`` logs to the harness socket instead of the journal;
        ``"private-journal"`` to a journald of its own in a private mount namespace.
        """
        conf = self.work / "portsentry.conf"
        ignore = self.work / "portsentry.ignore"
        ignore.write_text("")
        target = "journal" if log_target == "private-journal" else log_target
        conf.write_text(our_config(modes, tcp_ports, udp_ports, advanced_tcp, advanced_udp, target,
                                   extra + f'\nIGNORE_FILE="{ignore}"'))
        for path in (conf, ignore):
            path.chmod(0o644)
        self.log_target = log_target
        self.notify.messages.clear()
        _, uid, gid = self.user
        cmd = [*setpriv_args(uid, gid), SYSTEM_PYTHON, "-m", "sensor", "run", "--config", str(conf)]
        if log_target in ("syslog", "private-journal"):
            if log_target == "syslog":
                (self.work / "dev").mkdir(exist_ok=True)
                script = private_mounts_script(self.work, self.syslog.path, overlay_etc=False)
            else:
                for sub in ("jrun", "jvar"):
                    shutil.rmtree(self.work / sub, ignore_errors=True)
                    (self.work / sub).mkdir()
                script = private_journald_script(self.work)
            cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                   script + "\ncd " + shlex.quote(str(REPO_ROOT)) + "\nexec " + shlex.join(cmd)]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": str(REPO_ROOT),
               "PYTHONDONTWRITEBYTECODE": "1", "NOTIFY_SOCKET": self.notify.path}
        with open(self.work / "stderr.log", "ab") as err:
            self.proc = self.lab.spawn_victim(cmd, env=env, cwd=str(REPO_ROOT), stdout=err, stderr=err)
        proc = self.proc
        if not self.notify.wait_for(lambda m: m == "READY=1", 30, abort=lambda: proc.poll() is not None):
            raise RuntimeError(f"our sensor sent no READY=1:\n{self.stderr_text()[-3000:]}")
        self.pids = [proc.pid]
        if log_target == "private-journal":
            time.sleep(3.0)  # a fresh journald replays the kernel ring buffer first; lines sent meanwhile were lost

    def stderr_text(self) -> str:
        """The sensor's stderr so far."""
        try:
            return (self.work / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""

    def status(self) -> str:
        """The last STATUS= it sent."""
        statuses = [m for m in self.notify.messages if m.startswith("STATUS=")]
        return statuses[-1][7:] if statuses else ""

    def journald_pid(self) -> int | None:
        """The private journald's PID, if one was started."""
        try:
            return int((self.work / "journald.pid").read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """SIGTERM (it flushes its summaries) and wait; stop a private journald after it."""
        self._stop_sensor()
        pid = self.journald_pid()
        if pid is not None:
            time.sleep(1.0)  # let the last entries land before journald goes
            kill_pids([pid])
            (self.work / "journald.pid").unlink(missing_ok=True)

    def _stop_sensor(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def mark(self) -> int:
        """Index into the current log target's lines."""
        if self.log_target == "private-journal":
            return len(self._private_entries())
        return self.syslog.mark() if self.log_target == "syslog" else self.journal.mark()

    def lines(self, start: int = 0) -> list[Line]:
        """Attack alert lines since ``start``."""
        if self.log_target == "private-journal":
            return [Line(int(e["__REALTIME_TIMESTAMP"]) / 1e6, e.get("MESSAGE", ""), e.get("PORTSENTRY_SRC", ""),
                         int(e.get("_PID", 0)), e) for e in self._private_entries()[start:]]
        if self.log_target == "syslog":
            found = []
            for at, text in self.syslog.lines(start):
                match = re.search(r"attackalert: src=(\S+)", text)
                if match:
                    found.append(Line(at, text, match.group(1)))
            return found
        return self.journal.lines(self.pids, start)

    def _private_entries(self) -> list[dict[str, Any]]:
        """Our alerts in the private journal's files, oldest first (journalctl -D, read afresh)."""
        args = ["journalctl", "-D", str(self.work / "jrun"), "-o", "json", "--no-pager", "--all",
                f"MESSAGE_ID={self.message_id}", *(f"_PID={p}" for p in self.pids[-1:])]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    def close(self) -> None:
        """Stop, close sockets, remove our files."""
        self.stop()
        self.notify.close()
        self.syslog.close()
        shutil.rmtree(self.work, ignore_errors=True)
