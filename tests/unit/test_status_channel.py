"""One status channel: the raw capture's warnings reach the journal as ``adminalert:`` lines.

Regression (issue 13, item 4): sensor.raw.capture warned through ``logging.getLogger(__name__)``
with no handler, so "cannot open raw tcp socket" and the like went to stderr without the
``adminalert:`` prefix and priority of every other status line; an operator never saw them
in the journal.  Here the raw sockets cannot be opened (as without CAP_NET_RAW or with IPv6
off, after the capability check passed) and the warning must come out of the sensor's sink.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from pathlib import Path
from typing import Any

import pytest

from sensor.alert import PRIORITY_WARNING, SYSLOG_IDENTIFIER
from sensor.daemon import Sensor
from sensor.raw.capture import RawCapture
from sensor.sinks import Emitter, JournalSink

REAL_SOCKET = socket.socket


class NoRawSocket(REAL_SOCKET):
    """socket.socket, except that raw IPv4/IPv6 sockets fail as they do without CAP_NET_RAW."""

    def __init__(self, family: Any = -1, type: Any = -1, proto: Any = -1, fileno: Any = None) -> None:
        if fileno is None and type == socket.SOCK_RAW and family in (socket.AF_INET, socket.AF_INET6):
            raise PermissionError(errno.EPERM, "Operation not permitted")
        super().__init__(family, type, proto, fileno)


def journal_sink(tmp_path: Path) -> tuple[JournalSink, list[tuple[str, dict[str, str]]]]:
    """A JournalSink whose sd_journal_sendv is recorded (the socket file exists, nothing is sent)."""
    sent: list[tuple[str, dict[str, str]]] = []
    (tmp_path / "journal.socket").touch()
    sink = JournalSink(str(tmp_path / "journal.socket"))
    sink.send = lambda message, **fields: sent.append((message, fields))
    return sink, sent


def test_a_capture_warning_is_an_adminalert_in_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "portsentry.conf"
    conf.write_text('TCP_MODE="stcp"\nUDP_MODE="off"\nTCP_PORTS="1"\nLOG_TARGET="stderr"\n')
    sensor = Sensor(str(conf), defaults=[])
    sink, sent = journal_sink(tmp_path)
    sensor.emitter = Emitter([sink])
    monkeypatch.setattr(RawCapture, "is_supported", staticmethod(lambda: True))
    monkeypatch.setattr(socket, "socket", NoRawSocket)

    async def scenario() -> None:
        await sensor.apply_plan()
        sensor.shutdown()

    asyncio.run(scenario())
    warnings = [(m, f) for m, f in sent if "cannot open raw tcp" in m]
    assert [m for m, _ in warnings] == [
        "adminalert: warning: cannot open raw tcp socket (CAP_NET_RAW? IPv6 off?): [Errno 1] Operation not permitted",
        "adminalert: warning: cannot open raw tcp6 socket (CAP_NET_RAW? IPv6 off?): [Errno 1] Operation not permitted",
    ], sent
    for _message, fields in warnings:
        assert fields == {"PRIORITY": str(PRIORITY_WARNING), "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER}


def test_the_start_and_flood_lines_carry_their_catalog_ids(tmp_path: Path) -> None:
    """Issue 16: journalctl -x explains the start and the flood guard's lines (their own MESSAGE_IDs,
    catalog/portsentry-sensor.catalog); other status lines carry none, alerts keep theirs."""
    from sensor.alert import FLOOD_MESSAGE_ID, MESSAGE_ID, START_MESSAGE_ID
    from sensor.probe import Probe

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    conf = tmp_path / "portsentry.conf"
    conf.write_text(f'TCP_MODE="tcp"\nUDP_MODE="off"\nTCP_PORTS="{port}"\nLOG_TARGET="stderr"\n'
                    'FLOOD_SOURCES="20"\nBIND_ADDRESS="127.0.0.1"\n')
    sensor = Sensor(str(conf), defaults=[])
    sink, sent = journal_sink(tmp_path)
    sensor.emitter = Emitter([sink])

    async def scenario() -> int:
        running = asyncio.get_running_loop().create_task(sensor.run())
        for _ in range(200):
            if any(m.startswith("adminalert: started") for m, _ in sent):
                break
            await asyncio.sleep(0.01)
        for i in range(300):  # forged one-probe sources, well within one second
            sensor.on_probe(Probe(f"198.18.{1 + i // 250}.{i % 250}", "192.0.2.1", "tcp", 1000, "syn", "atcp",
                                  False))
        assert sensor.stop_event is not None
        sensor.stop_event.set()
        return await running

    assert asyncio.run(scenario()) == 0
    ids = {}
    for message, fields in sent:
        head, rest = message.split(": ", 1)
        kind = f"{head}: {rest.split()[0].rstrip(',:')}"
        ids.setdefault(kind, set()).add(fields.get("MESSAGE_ID"))
    assert ids["adminalert: started"] == {START_MESSAGE_ID}, sent
    assert ids["adminalert: flood"] == {FLOOD_MESSAGE_ID}, sent
    assert ids["adminalert: stopped"] == {None}, sent
    assert {f.get("MESSAGE_ID") for m, f in sent if m.startswith("attackalert:")} == {MESSAGE_ID}
