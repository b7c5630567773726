"""sensor/sdnotify.py: message builders and the one sending function."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sensor import sdnotify


def test_builders() -> None:
    assert sdnotify.ready("watching 3") == "READY=1\nSTATUS=watching 3"
    assert sdnotify.watchdog() == "WATCHDOG=1" and sdnotify.reloading() == "RELOADING=1"


def test_watchdog_interval() -> None:
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
    assert sdnotify.watchdog_interval({}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval(mine) == 1.0


def test_send(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    assert sdnotify.send("READY=1", {"NOTIFY_SOCKET": path}) is True
    assert server.recv(100) == b"READY=1"
    server.close()
    assert sdnotify.send("READY=1", {"NOTIFY_SOCKET": path}) is False
    assert sdnotify.send("READY=1", {}) is False
