"""Regression from the fault tests (issue 7) in sensor.sinks: journald's socket file removed."""

from __future__ import annotations

import io
from pathlib import Path

from sensor.sinks import Emitter, JournalSink, StderrSink


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
