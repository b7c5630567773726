"""sensor/sinks.py: fallback, recovery, bounded queue, never raising."""

from __future__ import annotations

import io
import socket
from pathlib import Path

from sensor import sinks
from sensor.sinks import Emitter, JournalSink, StderrSink, SyslogSink


class FlakySink:
    def __init__(self, name: str) -> None:
        self.name, self.up, self.lines = name, True, []  # type: ignore[var-annotated]

    def is_supported(self) -> bool:
        return True

    def write(self, message: str, fields: dict[str, str]) -> bool:
        if self.up:
            self.lines.append(message)
        return self.up


def test_falls_back_and_comes_back_saying_so_once() -> None:
    journal, syslog = FlakySink("journald"), FlakySink("syslog")
    emitter = Emitter([journal, syslog])
    emitter.emit("a1", {})
    journal.up = False
    emitter.emit("a2", {})
    emitter.emit("a3", {})
    journal.up = True
    emitter.emit("a4", {})
    assert journal.lines[0] == "a1" and "a4" in journal.lines
    assert syslog.lines[0] == "a2" and "a3" in syslog.lines
    notes = [m for m in journal.lines + syslog.lines if "log target changed" in m]
    assert len(notes) == 2


def test_nothing_lost_while_no_sink_works() -> None:
    only = FlakySink("journald")
    emitter = Emitter([only])
    only.up = False
    for i in range(5):
        assert emitter.emit(f"m{i}", {}) is False
    only.up = True
    emitter.retry()
    assert only.lines == [f"m{i}" for i in range(5)] and emitter.delivered == 5


def test_queue_is_bounded_and_losses_are_reported(monkeypatch: object) -> None:
    sinks.QUEUE_LIMIT = 3
    try:
        only = FlakySink("journald")
        only.up = False
        emitter = Emitter([only])
        for i in range(5):
            emitter.emit(f"m{i}", {})
        only.up = True
        emitter.retry()
        assert only.lines[:3] == ["m2", "m3", "m4"]
        assert "2 events lost" in only.lines[-1]
    finally:
        sinks.QUEUE_LIMIT = 10_000


def test_stderr_sink_writes_a_line() -> None:
    stream = io.StringIO()
    assert StderrSink(stream).write("attackalert: x", {}) is True
    assert stream.getvalue() == "portsentry-sensor: attackalert: x\n"


def test_syslog_sink_rfc3164_and_failure(tmp_path: Path) -> None:
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    sink = SyslogSink(path)
    assert sink.is_supported()
    assert sink.write("attackalert: src=192.0.2.2", {"PRIORITY": "5"})
    data = server.recv(4096).decode()
    assert data.startswith("<29>") and "portsentry-sensor[" in data and data.endswith("attackalert: src=192.0.2.2")
    server.close()
    Path(path).unlink()
    assert sink.write("again", {}) is False and not sink.is_supported()


def test_journal_sink_without_socket_returns_false(tmp_path: Path) -> None:
    sink = JournalSink(str(tmp_path / "none"))
    assert sink.is_supported() is False

    def boom(*_a: object, **_k: object) -> None:
        raise FileNotFoundError(2, "gone")
    sink.send = boom
    assert sink.write("x", {}) is False


def test_chains() -> None:
    assert [s.name for s in sinks.sinks_for("auto")] == ["journald", "syslog", "stderr"]
    assert [s.name for s in sinks.sinks_for("stderr")] == ["stderr"]


# --- from the fault tests (issue 7): journald's socket file removed (was test_sinks_journal_gone.py) ---

def test_missing_journal_socket_falls_back_instead_of_losing_the_alert(tmp_path: Path) -> None:
    """Regression: with /run/systemd/journal/socket removed, libsystemd's sd_journal_send() returns
    success without sending (ENOENT "fails silently"), so alerts vanished while journald was gone
    (15 of 60 lost in test_faults.py's journald test); now the sink refuses and stderr takes them."""
    sent: list[str] = []
    journal = JournalSink(str(tmp_path / "socket"))
    journal.send = lambda message, **fields: sent.append(message)  # libsystemd's silent success
    stream = io.StringIO()
    emitter = Emitter([journal, StderrSink(stream)])
    assert emitter.emit("attackalert: src=192.0.2.7", {})
    assert sent == [] and "attackalert: src=192.0.2.7" in stream.getvalue()

    (tmp_path / "socket").touch()  # journald is back
    assert emitter.emit("attackalert: src=192.0.2.8", {})
    assert sent[0] == "attackalert: src=192.0.2.8"
    assert sent[1:] == ["adminalert: log target changed from stderr to journald"]
