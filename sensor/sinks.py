"""Where alerts go: journald (native API), syslog (/dev/log), stderr.

Each backend is a small class with ``is_supported()`` and ``write()`` that
returns False instead of raising.  :class:`Emitter` tries them in order for
every line, so an alert reaches the first target that takes it: when journald
goes away alerts fall back to syslog or stderr at once, and go back to journald
as soon as it returns.  Every switch is said once.  If no target takes a line
it waits in a bounded queue and is retried; what overflows is counted and
reported, never dropped silently.  Journal fields: systemd.journal-fields(7).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from sensor.alert import (
    FACILITY_DAEMON,
    PRIORITY_ERR,
    PRIORITY_NOTICE,
    PRIORITY_WARNING,
    SYSLOG_IDENTIFIER,
    format_admin,
)

JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
QUEUE_LIMIT = 10_000


class AlertSink(Protocol):
    """A log target."""

    name: str

    def is_supported(self) -> bool: ...

    def write(self, message: str, fields: dict[str, str]) -> bool: ...


def _journal_send() -> Callable[..., Any] | None:
    try:
        from systemd import journal  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    sendv: Callable[..., Any] = journal.sendv

    def send(message: str, **fields: str) -> None:
        # sendv, not journal.send: send() walks the Python stack for CODE_FILE/LINE/FUNC
        # on every call (about 8% of the per-alert cost, measured in bench/).
        sendv(f"MESSAGE={message}", *(f"{key}={value}" for key, value in fields.items()))
    return send


class _SocketSink:
    """A sink that writes to a local socket: usable while the socket file exists."""

    name = ""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def is_supported(self) -> bool:
        return os.path.exists(self.socket_path)


class JournalSink(_SocketSink):
    """journald through python3-systemd's native API (``journal.sendv``)."""

    name = "journald"

    def __init__(self, socket_path: str = JOURNAL_SOCKET) -> None:
        super().__init__(socket_path)
        self.send = _journal_send()

    def is_supported(self) -> bool:
        return self.send is not None and super().is_supported()

    def write(self, message: str, fields: dict[str, str]) -> bool:
        # libsystemd's sd_journal_send() returns success when the socket file is
        # missing (ENOENT: "fail silently"), so a gone journald would eat alerts.
        if self.send is None or not os.path.exists(self.socket_path):
            return False
        try:
            self.send(message, **fields)
        except (OSError, ValueError):
            return False
        return True


class SyslogSink(_SocketSink):
    """RFC 3164 datagrams to /dev/log (rsyslog), facility daemon."""

    name = "syslog"

    def __init__(self, socket_path: str = SYSLOG_SOCKET) -> None:
        super().__init__(socket_path)
        self.sock: socket.socket | None = None

    def write(self, message: str, fields: dict[str, str]) -> bool:
        priority = int(fields.get("PRIORITY", PRIORITY_NOTICE))
        stamp = time.strftime("%b %e %H:%M:%S")
        line = f"<{FACILITY_DAEMON * 8 + priority}>{stamp} {SYSLOG_IDENTIFIER}[{os.getpid()}]: {message}"
        try:
            if self.sock is None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self.sock.connect(self.socket_path)
            self.sock.send(line.encode("utf-8", "replace"))
        except OSError:
            if self.sock is not None:
                self.sock.close()
            self.sock = None
            return False
        return True


class StderrSink:
    """One line per event on standard error (foreground use, last resort)."""

    name = "stderr"

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def is_supported(self) -> bool:
        return True

    def write(self, message: str, fields: dict[str, str]) -> bool:
        stream = self.stream or sys.stderr
        try:
            stream.write(f"{SYSLOG_IDENTIFIER}: {message}\n")
            stream.flush()
        except (OSError, ValueError):
            return False
        return True


def sinks_for(target: str) -> list[AlertSink]:
    """The ordered sink chain for a LOG_TARGET value."""
    chains: dict[str, list[AlertSink]] = {
        "auto": [JournalSink(), SyslogSink(), StderrSink()],
        "journal": [JournalSink(), SyslogSink(), StderrSink()],
        "syslog": [SyslogSink(), StderrSink()],
        "stderr": [StderrSink()],
    }
    return chains[target]


class Emitter:
    """Writes each event to the first sink that takes it; never raises."""

    def __init__(self, sinks: Sequence[AlertSink]) -> None:
        self.sinks = list(sinks)
        self.current: str | None = None
        self.queue: deque[tuple[str, dict[str, str]]] = deque()
        self.dropped = 0
        self.delivered = 0

    def _deliver(self, message: str, fields: dict[str, str]) -> str | None:
        for sink in self.sinks:
            if sink.is_supported() and sink.write(message, fields):
                return sink.name
        return None

    def _switched(self, name: str) -> None:
        previous, self.current = self.current, name
        if previous is not None and previous != name:
            note = format_admin(f"log target changed from {previous} to {name}")
            self._deliver(note, {"PRIORITY": str(PRIORITY_WARNING), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER})

    def emit(self, message: str, fields: dict[str, str]) -> bool:
        """Write one event (after anything still queued); False if it was queued."""
        self.retry()
        if self.queue:
            self._enqueue(message, fields)
            return False
        name = self._deliver(message, fields)
        if name is None:
            self._enqueue(message, fields)
            return False
        self._switched(name)
        self.delivered += 1
        return True

    def _enqueue(self, message: str, fields: dict[str, str]) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append((message, fields))

    def retry(self) -> None:
        """Deliver queued events, oldest first, while a sink takes them."""
        while self.queue:
            message, fields = self.queue[0]
            name = self._deliver(message, fields)
            if name is None:
                return
            self.queue.popleft()
            self.delivered += 1
            self._switched(name)
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self._deliver(format_admin(f"{dropped} events lost while no log target worked"),
                          {"PRIORITY": str(PRIORITY_ERR), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER})
