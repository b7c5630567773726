"""The shared end-to-end lab: network namespaces, journald, the sensor process.

Every e2e test builds its world from these pieces so that all traffic stays
inside namespaces the test created (documentation addresses only) and every
process it starts is killed by PID (doc/DESIGN.md §8):

- :class:`Lab` -- victim namespace ``<prefix>-v`` (192.0.2.1, 2001:db8::1) and
  attacker ``<prefix>-a`` (192.0.2.2, 2001:db8::2) on one link (a veth pair);
  :meth:`Lab.add_attacker` puts more attackers on the same link (macvlan on
  the attacker's side, so the victim keeps one plain ``eth0``).
- :class:`Journal` -- a standalone systemd-journald and ``journalctl -o json``.
- :class:`SensorProcess` -- ``python3 -m sensor run`` in the victim namespace
  as the sensor user with only CAP_NET_BIND_SERVICE + CAP_NET_RAW, with a
  test-owned NOTIFY_SOCKET.
- :func:`require_e2e` -- the skip/fail policy: in CI (CI=true) a missing
  prerequisite fails; elsewhere it skips with the reason.

Tests import it as ``from lab import Lab, SensorProcess`` (tests/e2e has no
``__init__.py``; pytest puts the directory on sys.path) and take the
``journald`` and ``sensor_user`` fixtures from tests/e2e/conftest.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # tests import the sensor's own modules (MESSAGE_ID, ...)
    sys.path.insert(0, str(REPO_ROOT))
if str(REPO_ROOT / "tests") not in sys.path:  # tests/ci.py (bench/ imports this module too)
    sys.path.append(str(REPO_ROOT / "tests"))
from ci import in_ci  # noqa: E402  (re-exported: tests/e2e/conftest.py imports it from here)

SYSTEM_PYTHON = "/usr/bin/python3"
JOURNALD = "/lib/systemd/systemd-journald"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SENSOR_USER = "portsentry-sensor"
SENSOR_CAPS = "net_bind_service,net_raw"
ICMP_ECHO = REPO_ROOT / "tools" / "icmp-echo"
# Every command the lab and the e2e tests run: each comes from a package tools/setup-env installs
# (tests/test_commands.py checks this list against the sources and against dpkg).
TOOLS = ("ip", "nmap", "setpriv", "journalctl", "ss", "fail2ban-server", "fail2ban-client", "fail2ban-regex",
         "nft", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "logger", "curl", "unshare",
         "useradd", "cat", "rm", "crowdsec", "cscli", "crowdsec-firewall-bouncer", "prometheus-node-exporter")

VICTIM4, VICTIM6 = "192.0.2.1", "2001:db8::1"
ATTACKER4, ATTACKER6 = "192.0.2.2", "2001:db8::2"

# Shared between concurrent pytest sessions (other helpers run in parallel).
_STATE_DIR = Path("/run/portsentry-e2e")


# --------------------------------------------------------------------------
# Policy: skip outside CI, fail in CI.

def e2e_unavailable(reason: str) -> None:
    """Fail (CI) or skip (elsewhere) because the lab cannot run."""
    if in_ci():
        pytest.fail(f"e2e prerequisite missing in CI: {reason}", pytrace=False)
    pytest.skip(f"e2e: {reason}")


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the e2e lab (empty when all is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("not root")
    missing += [f"no {tool} in PATH" for tool in TOOLS if shutil.which(tool) is None]
    for path in (SYSTEM_PYTHON, JOURNALD):
        if not os.access(path, os.X_OK):
            missing.append(f"no {path}")
    return missing


def require_e2e() -> None:
    """Skip (outside CI) or fail (CI=true) unless root and the lab's tools are here."""
    missing = missing_prerequisites()
    if missing:
        e2e_unavailable(", ".join(missing))


# --------------------------------------------------------------------------
# Processes.

def run(args: Sequence[str], check: bool = True, timeout: float = 60,
        **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capture text output; on failure raise with its stderr."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


def kill_pid(proc: subprocess.Popen[Any], timeout: float = 5) -> int | None:
    """SIGTERM then SIGKILL one process by PID; return its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def netns_exists(name: str) -> bool:
    """True if ``ip netns`` knows the namespace."""
    return Path("/run/netns", name).exists()


def netns_pids(name: str) -> list[int]:
    """PIDs of the processes living in one namespace."""
    out = run(["ip", "netns", "pids", name], check=False).stdout
    return [int(pid) for pid in out.split()]


def delete_netns(name: str) -> None:
    """Kill what still runs in a namespace (by PID) and delete it."""
    if not netns_exists(name):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = netns_pids(name)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if pids:
            time.sleep(0.3)
    run(["ip", "netns", "del", name], check=False)


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def world_readable_dir(prefix: str) -> Path:
    """A fresh 0755 directory under /tmp that the sensor user can read."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------
# Network namespaces.

class Lab:
    """Victim and attacker namespaces on one link; see the module docstring."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.victim = f"{prefix}-v"
        self.attacker = f"{prefix}-a"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self.attackers: dict[str, str] = {}

    def __enter__(self) -> Lab:
        require_e2e()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building ---------------------------------------------------------
    def _new_ns(self, name: str) -> None:
        claim_netns(name)
        delete_netns(name)  # a leftover from a crashed run (its owner is gone)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def _address(self, ns: str, addr4: str, addr6: str) -> None:
        run(["ip", "-n", ns, "addr", "add", f"{addr4}/24", "dev", "eth0"])
        run(["ip", "-n", ns, "addr", "add", f"{addr6}/64", "dev", "eth0", "nodad"])
        run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _build(self) -> None:
        self._new_ns(self.victim)
        self._new_ns(self.attacker)
        run(["ip", "-n", self.victim, "link", "add", "eth0", "type", "veth",
             "peer", "name", "eth0", "netns", self.attacker])
        self._address(self.victim, VICTIM4, VICTIM6)
        self._address(self.attacker, ATTACKER4, ATTACKER6)
        self.attackers[self.attacker] = ATTACKER4
        self.wait_reachable(self.attacker, VICTIM4)
        self.wait_reachable(self.attacker, VICTIM6)

    def add_attacker(self, prefix_suffix: str, addr4: str, addr6: str) -> str:
        """Another attacker namespace ``<prefix>-<suffix>`` on the same link; returns its name."""
        name = f"{self.prefix}-{prefix_suffix}"
        self._new_ns(name)
        tmp_if = f"mv{os.getpid() % 100000}{len(self.namespaces)}"
        run(["ip", "-n", self.attacker, "link", "add", "link", "eth0", "name", tmp_if,
             "type", "macvlan", "mode", "bridge"])
        run(["ip", "-n", self.attacker, "link", "set", tmp_if, "netns", name])
        run(["ip", "-n", name, "link", "set", tmp_if, "name", "eth0"])
        self._address(name, addr4, addr6)
        self.attackers[name] = addr4
        self.wait_reachable(name, VICTIM4)
        self.wait_reachable(name, VICTIM6)
        return name

    def wait_reachable(self, ns: str, addr: str, timeout: float = 10) -> None:
        """Wait until ``addr`` answers an ICMP echo from namespace ``ns`` (tools/icmp-echo: no ping needed)."""
        def ok() -> bool:
            return run(["ip", "netns", "exec", ns, SYSTEM_PYTHON, str(ICMP_ECHO), addr, "1"],
                       check=False).returncode == 0
        if not wait_until(ok, timeout, step=0.2):
            raise RuntimeError(f"{addr} unreachable from {ns}")

    # -- running ----------------------------------------------------------
    def run_in(self, ns: str, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in a namespace (check=False unless asked)."""
        kw.setdefault("check", False)
        return run(["ip", "netns", "exec", ns, *args], **kw)

    def run_victim(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in the victim namespace."""
        return self.run_in(self.victim, args, **kw)

    def run_attacker(self, args: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run a command in the (first) attacker namespace."""
        return self.run_in(self.attacker, args, **kw)

    def spawn_in(self, ns: str, args: Sequence[str], user: tuple[int, int] | None = None,
                 env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start a tracked process in a namespace, optionally as (uid, gid) with the sensor caps."""
        prefix = ["ip", "netns", "exec", ns]
        if user is not None:
            prefix += setpriv_args(*user)
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen([*prefix, *args], env=env, **kw)
        self.procs.append(proc)
        return proc

    def spawn_victim(self, args: Sequence[str], user: tuple[int, int] | None = None,
                     env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start a tracked process in the victim namespace."""
        return self.spawn_in(self.victim, args, user=user, env=env, **kw)

    def spawn_attacker(self, args: Sequence[str], user: tuple[int, int] | None = None,
                       env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[Any]:
        """Start a tracked process in the attacker namespace."""
        return self.spawn_in(self.attacker, args, user=user, env=env, **kw)

    def serve_tcp(self, port: int, ns: str | None = None) -> subprocess.Popen[Any]:
        """A real TCP service (python http.server on [::], dual stack) in the victim; waits until it listens."""
        ns = ns or self.victim
        proc = self.spawn_in(ns, [SYSTEM_PYTHON, "-m", "http.server", str(port), "--bind", "::"],
                             cwd="/")
        if not wait_until(lambda: self.listening(ns, "tcp", port) or proc.poll() is not None, 10):
            raise RuntimeError(f"http.server on port {port} did not start")
        if proc.poll() is not None:
            raise RuntimeError(f"http.server on port {port} exited with {proc.returncode}")
        return proc

    def listening(self, ns: str, proto: str, port: int) -> bool:
        """True if something in ``ns`` listens on (tcp) or is bound to (udp) ``port``."""
        flag = "-Htln" if proto == "tcp" else "-Huln"
        out = self.run_in(ns, ["ss", flag, f"sport = :{port}"]).stdout
        return bool(out.strip())

    def nmap(self, args: Sequence[str], ns: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run nmap (no ping, no DNS, bounded time) from an attacker namespace."""
        ns = ns or self.attacker
        base = ["nmap", "-n", "-Pn", "--max-retries", "1", "--host-timeout", f"{int(timeout) - 5}s"]
        return self.run_in(ns, [*base, *args], timeout=timeout)

    # -- cleanup ----------------------------------------------------------
    def close(self) -> None:
        """Kill tracked processes by PID, then delete every namespace we made."""
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                kill_pid(proc)
        for ns in reversed(self.namespaces):
            delete_netns(ns)
            release_netns(ns)
        self.namespaces.clear()


def claim_netns(name: str) -> None:
    """Record this pytest process as the namespace's owner; refuse one a live session owns."""
    with _locked():
        owner = _STATE_DIR / "netns" / name
        owner.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError, ValueError):
            pid = int(owner.read_text())
            if pid != os.getpid() and _pid_alive(pid):
                raise RuntimeError(f"network namespace {name} belongs to a running test session "
                                   f"(PID {pid}); use another Lab prefix or wait for it")
        owner.write_text(str(os.getpid()))


def release_netns(name: str) -> None:
    """Forget the namespace's owner record."""
    with _locked():
        (_STATE_DIR / "netns" / name).unlink(missing_ok=True)


def setpriv_args(uid: int, gid: int) -> list[str]:
    """setpriv prefix: become uid/gid with only the sensor's two capabilities."""
    caps = ",".join(f"+{cap}" for cap in SENSOR_CAPS.split(","))
    return ["setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups",
            "--inh-caps", f"-all,{caps}", "--ambient-caps", caps,
            "--bounding-set", f"-all,{caps}"]


# --------------------------------------------------------------------------
# journald.

@contextlib.contextmanager
def _locked() -> Iterator[None]:
    _STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(_STATE_DIR / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _journald_pid() -> int | None:
    """The journald a lab started (shared by concurrent sessions), if alive."""
    try:
        pid = int((_STATE_DIR / "journald.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def journal_socket_alive() -> bool:
    """True if a journald listens on its socket (a stale socket file refuses)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(JOURNAL_SOCKET)
        except OSError:
            return False
    return True


class Journal:
    """A systemd-journald for the test session, read back with journalctl -o json."""

    def __init__(self) -> None:
        self.started = False
        self._user_file = _STATE_DIR / "users" / str(os.getpid())

    def start(self) -> Journal:
        """Use the running journald or start a standalone one."""
        with _locked():
            self._user_file.parent.mkdir(parents=True, exist_ok=True)
            self._user_file.write_text("")
            if not journal_socket_alive():
                self._spawn()
        if not wait_until(self._answers, 10):
            raise RuntimeError("systemd-journald does not answer")
        return self

    def _spawn(self) -> None:
        proc = subprocess.Popen([JOURNALD], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        (_STATE_DIR / "journald.pid").write_text(str(proc.pid))
        self.started = True
        if not wait_until(lambda: journal_socket_alive() or proc.poll() is not None, 10):
            raise RuntimeError("systemd-journald did not create its socket")
        if proc.poll() is not None:
            raise RuntimeError(f"systemd-journald exited with {proc.returncode}")

    def _answers(self) -> bool:
        """Write a probe entry and see it come back."""
        tag = f"portsentry-e2e-probe-{os.getpid()}-{time.monotonic_ns()}"
        run(["logger", "--journald"], check=False, input=f"MESSAGE={tag}\nSYSLOG_IDENTIFIER=e2e\n")
        out = run(["journalctl", "-o", "cat", "SYSLOG_IDENTIFIER=e2e", "-n", "20"], check=False)
        return tag in out.stdout

    def stop(self) -> None:
        """Stop journald if a lab started it and no other session still uses it."""
        with _locked():
            self._user_file.unlink(missing_ok=True)
            users = [p for p in self._user_file.parent.iterdir()
                     if p.name.isdigit() and _pid_alive(int(p.name))]
            pid = _journald_pid()
            if users or pid is None:
                return
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not _pid_alive(pid), 5)
            (_STATE_DIR / "journald.pid").unlink(missing_ok=True)

    def cursor(self) -> str:
        """The cursor of the newest entry ('' if the journal is empty)."""
        out = run(["journalctl", "-o", "json", "-n", "1", "--no-pager"], check=False).stdout
        lines = [line for line in out.splitlines() if line.strip()]
        return str(json.loads(lines[-1])["__CURSOR"]) if lines else ""

    def entries(self, after_cursor: str = "", **match: str) -> list[dict[str, Any]]:
        """Entries after a cursor, filtered by FIELD=value matches (AND).

        Matches are applied here, not by journalctl: systemd 252's journalctl
        skips the first matching entry when --after-cursor is combined with
        matches whose cursor entry does not match.
        """
        args = ["journalctl", "-o", "json", "--no-pager", "--all"]
        if after_cursor:
            args.append(f"--after-cursor={after_cursor}")
        out = run(args, check=False).stdout
        found = [json.loads(line) for line in out.splitlines() if line.strip()]
        return [e for e in found if all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, after_cursor: str, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float = 10, **match: str) -> list[dict[str, Any]]:
        """Wait until some entry satisfies ``predicate``; return all matching entries (maybe [])."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal found
            found = [e for e in self.entries(after_cursor, **match) if predicate(e)]
            return bool(found)

        wait_until(check, timeout, step=0.2)
        return found


def ensure_user(name: str = SENSOR_USER) -> tuple[str, int, int]:
    """The sensor's system user, created if missing -> (name, uid, gid)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name], check=False)
        entry = pwd.getpwnam(name)  # a concurrent session may have made it
    return name, entry.pw_uid, entry.pw_gid


# --------------------------------------------------------------------------
# The sensor.

class NotifySocket:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self._sock.settimeout(0.2)
        self._closed = False
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.extend(data.decode("utf-8", "replace").splitlines())
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float,
                 abort: Callable[[], bool] = lambda: False) -> bool:
        """Wait for a message (one ``KEY=value`` line) satisfying predicate; stop early if abort()."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(predicate(m) for m in self.messages):
                left = deadline - time.monotonic()
                if left <= 0 or abort():
                    return False
                self._cond.wait(min(left, 0.2))
        return True

    def close(self) -> None:
        """Stop collecting and close the socket."""
        self._closed = True
        self._thread.join(2)
        self._sock.close()


class SensorProcess:
    """``python3 -m sensor run`` in the victim namespace (or ``ns``) as the sensor user."""

    READY_TIMEOUT = 20.0

    def __init__(self, lab: Lab, conf_text: str, ignore_text: str = "",
                 user: tuple[str, int, int] | None = None, tmp_path: Path | None = None,
                 extra_args: Sequence[str] = (), ns: str | None = None) -> None:
        self.lab = lab
        self.ns = ns or lab.victim
        self.user = user or ensure_user()
        self.tmp_path = tmp_path
        self.extra_args = list(extra_args)
        self.workdir = world_readable_dir("portsentry-e2e-")
        self.conf_path = self.workdir / "portsentry.conf"
        self.ignore_path = self.workdir / "portsentry.ignore"
        self.stderr_path = self.workdir / "stderr.log"
        self.write_ignore(ignore_text)
        self.write_config(conf_text)
        self.notify_dir = world_readable_dir("portsentry-notify-")
        self.notify_dir.chmod(0o777)
        self.notify = NotifySocket(self.notify_dir)
        self.proc: subprocess.Popen[Any] | None = None

    # -- files ------------------------------------------------------------
    def write_config(self, conf_text: str) -> None:
        """Write the config; IGNORE_FILE points to our ignore file unless the text sets it."""
        if "IGNORE_FILE" not in conf_text:
            conf_text = f'{conf_text.rstrip()}\nIGNORE_FILE="{self.ignore_path}"\n'
        self.conf_path.write_text(conf_text)
        self.conf_path.chmod(0o644)

    def write_ignore(self, ignore_text: str) -> None:
        """Write the ignore file."""
        self.ignore_path.write_text(ignore_text)
        self.ignore_path.chmod(0o644)

    # -- lifecycle --------------------------------------------------------
    def command(self) -> list[str]:
        """The sensor's command line (without the namespace/setpriv prefix)."""
        return [SYSTEM_PYTHON, "-m", "sensor", "run", "--config", str(self.conf_path),
                *self.extra_args]

    def env(self) -> dict[str, str]:
        """A small environment: PYTHONPATH to the source tree, our NOTIFY_SOCKET."""
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "PYTHONPATH": str(REPO_ROOT), "PYTHONDONTWRITEBYTECODE": "1",
                "NOTIFY_SOCKET": self.notify.path}

    def start(self, wait_ready: bool = True) -> SensorProcess:
        """Start the sensor; wait for READY=1 (fail with its stderr if it exits first)."""
        _, uid, gid = self.user
        with open(self.stderr_path, "wb") as err:
            # spawn_victim for the victim: tests may wrap it (test_faults.py: a private mount namespace)
            spawn = self.lab.spawn_victim if self.ns == self.lab.victim else functools.partial(
                self.lab.spawn_in, self.ns)
            self.proc = spawn(self.command(), user=(uid, gid), env=self.env(), cwd=str(REPO_ROOT),
                              stdout=err, stderr=err)
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait for READY=1 on the notify socket."""
        proc = self.proc
        assert proc is not None, "start() first"
        ready = self.notify.wait_for(lambda m: m == "READY=1", timeout or self.READY_TIMEOUT,
                                     abort=lambda: proc.poll() is not None)
        if not ready:
            state = f"exited with {proc.returncode}" if proc.poll() is not None else "still running"
            raise AssertionError(f"sensor sent no READY=1 ({state}); stderr:\n{self.stderr_text()}")

    def running(self) -> bool:
        """True while the sensor process lives."""
        return self.proc is not None and self.proc.poll() is None

    def reload(self) -> None:
        """Send SIGHUP."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM; return the exit code (SIGKILL and fail if it does not exit)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_pid(self.proc)
                raise AssertionError(f"sensor ignored SIGTERM for {timeout} s; "
                                     f"stderr:\n{self.stderr_text()}") from None
        return int(self.proc.returncode)

    def stderr_text(self) -> str:
        """Everything the sensor wrote to stdout/stderr so far."""
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        """The sensor's PID (ip netns exec and setpriv exec, so journald's _PID is this)."""
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def entries(self, journal: Journal, after_cursor: str = "", **match: str) -> list[dict[str, Any]]:
        """Journal entries written by this sensor process (by _PID) after a cursor."""
        return journal.entries(after_cursor, _PID=str(self.pid), **match)

    def alerts(self, journal: Journal, after_cursor: str = "", **match: str) -> list[dict[str, Any]]:
        """This sensor's attack alerts; match keys are PORTSENTRY_* suffixes (src=..., dport=...)."""
        from sensor.alert import MESSAGE_ID
        fields = {f"PORTSENTRY_{key.upper()}": value for key, value in match.items()}
        return self.entries(journal, after_cursor, MESSAGE_ID=MESSAGE_ID, **fields)

    @property
    def notifications(self) -> list[str]:
        """sd_notify messages seen so far (one KEY=value per item)."""
        return list(self.notify.messages)

    def close(self) -> None:
        """Stop the process (by PID), keep stderr in tmp_path if given, remove our files."""
        if self.proc is not None:
            kill_pid(self.proc)
        if self.tmp_path is not None:
            with contextlib.suppress(OSError):
                shutil.copy(self.stderr_path, self.tmp_path / "sensor-stderr.log")
        self.notify.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.notify_dir, ignore_errors=True)

    def __enter__(self) -> SensorProcess:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# Reading alerts back (shared by the e2e modules).

Entries = list[dict[str, Any]]


def poll_alerts(fetch: Callable[[], Entries], until: Callable[[Entries], bool], timeout: float,
                sensor: SensorProcess, what: str = "") -> Entries:
    """Call ``fetch`` until ``until(found)`` holds or time runs out; assert it held; return found."""
    deadline = time.monotonic() + timeout
    while True:
        found = fetch()
        if until(found) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert until(found), (f"alerts {what} never satisfied the condition; got:\n"
                          + "\n".join(e["MESSAGE"] for e in found)
                          + f"\nsensor stderr:\n{sensor.stderr_text()}")
    return found


def max_count(found: Entries) -> int:
    """The highest PORTSENTRY_COUNT among alerts (first alert and summaries)."""
    return max((int(e["PORTSENTRY_COUNT"]) for e in found), default=0)


def first_alerts(found: Entries) -> Entries:
    """The immediate (non-summary) alerts."""
    return [e for e in found if e.get("PORTSENTRY_SUMMARY") != "1"]


def nmap_ports(seq: Sequence[int]) -> str:
    """nmap's -p syntax."""
    return ",".join(map(str, seq))


# --------------------------------------------------------------------------
# Positive controls: "nothing happened" is believed only after something did.

def positive_control(lab: Lab, journal: Journal, sensor: SensorProcess, cursor: str, ns: str,
                     nmap_args: Sequence[str], src: str, proto: str, ports: int,
                     timeout: float = 20) -> Entries:
    """A known-good scan after an action that must leave no trace; returns its alerts.

    The scanner in ``ns`` (source ``src``, which must not have scanned this sensor in the
    current window) runs ``nmap_args`` at the same sockets the action used (same family,
    protocol and ports); this waits until the sensor has reported ``ports`` (>= 2) ports
    of it.  That count only comes in a summary line, so the sensor's periodic flush has run
    as well.  A socket's packets and connections are handled in arrival order, so whatever
    the earlier action would have caused (an alert or a summary) is in the journal by now.
    """
    assert ports >= 2, "one port gives no summary line: use two or more"
    result = lab.nmap(nmap_args, ns=ns)
    assert result.returncode == 0, result.stderr
    return poll_alerts(lambda: sensor.alerts(journal, cursor, src=src, proto=proto),
                       lambda found: max_count(found) >= ports, timeout, sensor,
                       f"of the positive control {src} ({' '.join(nmap_args)})")
