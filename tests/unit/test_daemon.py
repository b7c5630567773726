"""sensor/daemon.py, events.py, watch.py in-process: reload keeps the last good config, plans follow config."""

from __future__ import annotations

import asyncio
import io
import socket
import threading
from pathlib import Path

import pytest

from sensor.daemon import Sensor
from sensor.portplan import PortPlan
from sensor.sinks import Emitter, StderrSink
from sensor.watch import describe


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def conf(tmp_path: Path, ports: str) -> Path:
    path = tmp_path / "portsentry.conf"
    path.write_text(f'TCP_MODE="tcp"\nUDP_MODE="off"\nTCP_PORTS="{ports}"\nIGNORE_FILE="{tmp_path}/ignore"\n'
                    'LOG_TARGET="stderr"\n')
    return path


async def _reloads(tmp_path: Path) -> tuple[list[int], list[int], list[int], str]:
    first, second = free_port(), free_port()
    path = conf(tmp_path, str(first))
    stream = io.StringIO()
    sensor = Sensor(str(path), defaults=[])
    sensor.emitter = Emitter([StderrSink(stream)])
    await sensor.apply_plan()
    before = sensor.listeners.watched("tcp")
    path.write_text('TCP_MODE="tcp"\nTCP_PORTS="1,99999"\n')
    await sensor.reload()
    kept = sensor.listeners.watched("tcp")
    conf(tmp_path, str(second))
    for _ in range(100):  # a storm of SIGHUPs coalesces
        sensor.request_reload()
    assert sensor.reload_task is not None
    await sensor.reload_task
    after = sensor.listeners.watched("tcp")
    sensor.shutdown()
    return before, kept, [*after, first, second], stream.getvalue()


def test_reload_keeps_last_good_config_and_applies_new_one(tmp_path: Path) -> None:
    before, kept, after, log = asyncio.run(_reloads(tmp_path))
    first, second = after[-2:]
    assert before == [first] and kept == [first] and after[:-2] == [second]
    assert f"reload failed, keeping the previous configuration: {tmp_path}/portsentry.conf:2: TCP_PORTS:" in log
    assert log.count("configuration reloaded") <= 2


def test_broken_ignore_file_keeps_previous_list(tmp_path: Path) -> None:
    path = conf(tmp_path, str(free_port()))
    (tmp_path / "ignore").write_text("198.51.100.0/24\n")
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    assert "198.51.100.9" in sensor.loaded.ignore
    (tmp_path / "ignore").write_text("198.51.100.0/24\nbad line\n")
    sensor.reload_ignore()
    assert "198.51.100.9" in sensor.loaded.ignore
    assert "ignore file not reloaded, keeping the previous list" in stream.getvalue()
    (tmp_path / "ignore").write_text("203.0.113.0/24\n")
    sensor.reload_ignore()
    assert "198.51.100.9" not in sensor.loaded.ignore and "203.0.113.4" in sensor.loaded.ignore


def test_status_line() -> None:
    plan = PortPlan(tcp_raw=frozenset({1, 2}), tcp_raw_mode="atcp")
    assert describe(plan, [], [53]) == "watching atcp 2 ports, udp 1 port bound"


def test_soft_fd_limit_is_raised_to_the_hard_one() -> None:
    import resource
    import subprocess
    import sys
    code = ("import resource; from sensor.daemon import raise_fd_limit; raise_fd_limit(); "
            "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = min(64, hard)
    out = subprocess.run(["prlimit", f"--nofile={low}:{hard}", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True, cwd=str(Path(__file__).parents[2]))
    assert out.stdout.split() == [str(hard), str(hard)]


def test_new_host_address_joins_the_ignore_list(tmp_path: Path) -> None:
    """An address added to an interface after start is this host's own: never reported."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "fib_trie").write_text("")
    (proc / "net" / "if_inet6").write_text("")
    for name in ("tcp", "tcp6", "udp", "udp6"):
        (proc / "net" / name).write_text("header\n")
    path = conf(tmp_path, str(free_port()))
    sensor = Sensor(str(path), defaults=[], proc=str(proc))
    assert "203.0.113.50" not in sensor.loaded.ignore
    (proc / "net" / "fib_trie").write_text("Local:\n     |-- 203.0.113.50\n        /32 host LOCAL\n")
    asyncio.run(sensor.refresh_plan())
    assert "203.0.113.50" in sensor.loaded.ignore


def test_ignore_list_is_rebuilt_only_when_host_addresses_change(tmp_path: Path) -> None:
    """Regression (issue 12, item 7): every PLAN_REFRESH rebuilt the whole ignore list (1.8 s for 5,000
    entries); now only a change of this host's addresses (or of the file) rebuilds it."""
    import pytest as _pytest

    from sensor import loaded

    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "fib_trie").write_text("")
    (proc / "net" / "if_inet6").write_text("")
    for name in ("tcp", "tcp6", "udp", "udp6"):
        (proc / "net" / name).write_text("header\n")
    (tmp_path / "ignore").write_text("198.51.100.0/24\n")
    sensor = Sensor(str(conf(tmp_path, str(free_port()))), defaults=[], proc=str(proc))
    builds: list[int] = []
    real_build = loaded.IgnoreList.build

    def counting_build(*args: object, **kw: object) -> object:
        builds.append(1)
        return real_build(*args, **kw)  # type: ignore[arg-type]

    mp = _pytest.MonkeyPatch()
    mp.setattr(loaded.IgnoreList, "build", counting_build)
    try:
        for _ in range(5):
            asyncio.run(sensor.refresh_plan())
        unchanged = len(builds)
        (proc / "net" / "fib_trie").write_text("Local:\n     |-- 203.0.113.50\n        /32 host LOCAL\n")
        asyncio.run(sensor.refresh_plan())
        asyncio.run(sensor.refresh_plan())
    finally:
        mp.undo()
    assert unchanged == 0
    assert len(builds) == 1
    assert "203.0.113.50" in sensor.loaded.ignore and "198.51.100.9" in sensor.loaded.ignore


def test_resolve_host_adds_the_escaped_name_last(tmp_path: Path, monkeypatch: object) -> None:
    """RESOLVE_HOST=1: the reverse-DNS name (attacker-controlled) comes last, made inert."""
    import pytest as _pytest

    from sensor.alert import Alert

    path = conf(tmp_path, str(free_port()))
    path.write_text(path.read_text() + 'RESOLVE_HOST="1"\n')
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    mp = _pytest.MonkeyPatch()
    mp.setattr(socket, "gethostbyaddr", lambda _a: ("evil src=203.0.113.9\n.example", [], []))

    async def scenario() -> None:
        sensor.emit_alert(Alert("198.51.100.7", "192.0.2.1", "tcp", 1, "connect", "tcp", True, 1))
        for _ in range(100):
            if stream.getvalue():
                return
            await asyncio.sleep(0.01)

    try:
        asyncio.run(scenario())
    finally:
        mp.undo()
    line = stream.getvalue().strip()
    assert line.startswith("portsentry-sensor: attackalert: src=198.51.100.7 ")
    assert line.endswith(" host=evil_src_203.0.113.9_.example") and line.count("src=") == 1
    assert line.index("src=198.51.100.7") < line.index("host=")


def test_port_busy_at_start_is_watched_once_freed(tmp_path: Path) -> None:
    """Regression (bench finding): a port busy at start (PortSentry's TIME_WAIT) stayed unwatched until SIGHUP.

    A port a real service listens on is not retried: the sensor must never take it over while
    that service restarts.
    """
    lingering = socket.socket(socket.AF_INET6)  # bound, not listening, no SO_REUSEADDR: like TIME_WAIT
    lingering.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    lingering.bind(("::", 0))
    service = socket.socket(socket.AF_INET6)
    service.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    service.bind(("::", 0))
    service.listen()
    port, held = lingering.getsockname()[1], service.getsockname()[1]
    path = conf(tmp_path, f"{port},{held}")
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        await sensor.apply_plan()
        first = sensor.listeners.watched("tcp")
        await sensor.refresh_plan()
        still = sensor.listeners.watched("tcp")
        lingering.close()
        service.close()
        await sensor.refresh_plan()
        after = sensor.listeners.watched("tcp")
        sensor.shutdown()
        return first, still, after

    first, still, after = asyncio.run(scenario())
    log = stream.getvalue()
    assert first == [] and still == [] and after == [port]
    assert log.count(f"TCP port {port} (") == 1  # warned once, not on every retry
    assert f"TCP port {port} is free now and watched" in log
    assert log.count(f"TCP port {held} (") == 1 and f"TCP port {held} is free" not in log


# --- issue 12, item 9: RESOLVE_HOST never loses an alert ---------------------------------------------

def _resolving_sensor(tmp_path: Path) -> tuple[Sensor, io.StringIO]:
    path = conf(tmp_path, str(free_port()))
    path.write_text(path.read_text() + 'RESOLVE_HOST="1"\nSCAN_TRIGGER="0"\nSUMMARY_INTERVAL="300"\n')
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    return sensor, stream


def _not_utf8(_address: str) -> tuple[str, list[str], list[str]]:
    raise UnicodeDecodeError("utf-8", b"\xff\xfe.example", 0, 1, "invalid start byte")


def _broken(_address: str) -> tuple[str, list[str], list[str]]:
    raise RuntimeError("resolver library bug")


def test_a_lookup_that_raises_still_writes_the_alert(tmp_path: Path) -> None:
    """Regression: a reverse name that is not UTF-8 raised UnicodeDecodeError in the lookup task and the
    alert was lost; any failing lookup now writes the alert without a name."""
    import pytest as _pytest

    from sensor.alert import Alert

    for fake in (_not_utf8, _broken):
        sensor, stream = _resolving_sensor(tmp_path)
        mp = _pytest.MonkeyPatch()
        mp.setattr(socket, "gethostbyaddr", fake)

        async def scenario(the_sensor: Sensor = sensor, out: io.StringIO = stream) -> None:
            the_sensor.emit_alert(Alert("198.51.100.7", "192.0.2.1", "tcp", 1, "connect", "tcp", True, 1))
            for _ in range(200):
                if out.getvalue():
                    return
                await asyncio.sleep(0.01)

        try:
            asyncio.run(scenario())
        finally:
            mp.undo()
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1, (fake.__name__, lines)
        assert lines[0].startswith("portsentry-sensor: attackalert: src=198.51.100.7 ")
        assert "host=" not in lines[0]


def _hanging_lookups() -> tuple[threading.Event, list[str], pytest.MonkeyPatch]:
    """Reverse lookups that hang until the returned event is set; the addresses asked; undo with mp.undo()."""
    release = threading.Event()
    asked: list[str] = []

    def hanging(address: str) -> tuple[str, list[str], list[str]]:
        asked.append(address)
        release.wait(10)
        return "late.example", [], []

    mp = pytest.MonkeyPatch()
    mp.setattr(socket, "gethostbyaddr", hanging)
    return release, asked, mp


def test_shutdown_writes_pending_and_closing_alerts_while_a_lookup_hangs(tmp_path: Path) -> None:
    """Regression: at SIGTERM the closing summary went into a new lookup task that asyncio.run then
    cancelled (lost), as was an alert whose lookup was still running; and a hung lookup thread held up
    the exit.  Now both are written without a name, and the hung lookup does not hold up the exit."""

    from sensor.probe import Probe

    sensor, stream = _resolving_sensor(tmp_path)
    release, asked, mp = _hanging_lookups()

    async def scenario() -> int:
        running = asyncio.get_running_loop().create_task(sensor.run())
        for _ in range(200):
            if sensor.stop_event is not None and "started" in stream.getvalue():
                break
            await asyncio.sleep(0.01)
        sensor.on_probe(Probe("198.51.100.7", "192.0.2.1", "tcp", 1, "connect", "tcp", True))
        sensor.on_probe(Probe("198.51.100.7", "192.0.2.1", "tcp", 2, "connect", "tcp", True))
        await asyncio.sleep(0.1)
        assert sensor.stop_event is not None
        sensor.stop_event.set()
        return await running

    try:
        code = asyncio.run(scenario())
    finally:
        release.set()
        mp.undo()
    alerts = [line for line in stream.getvalue().splitlines() if "attackalert:" in line]
    assert code == 0 and asked, stream.getvalue()
    assert len(alerts) == 2, stream.getvalue()
    assert "count=1 " in alerts[0] and "count=2 " in alerts[1] and "continues" in alerts[1], alerts
    assert all("host=" not in line for line in alerts)
    lines = stream.getvalue().splitlines()
    assert "stopped" in lines[-1], lines  # every alert before the closing status line


def test_hung_lookups_are_bounded_and_every_alert_is_written(tmp_path: Path) -> None:
    """20 alerts while every lookup hangs: at most MAX_LOOKUPS lookup threads, all 20 alerts written."""


    from sensor import events
    from sensor.alert import Alert

    sensor, stream = _resolving_sensor(tmp_path)
    release, asked, mp = _hanging_lookups()
    mp.setattr(events, "RESOLVE_TIMEOUT", 0.2)

    async def scenario() -> None:
        for i in range(20):
            sensor.emit_alert(Alert(f"198.51.100.{i + 1}", "192.0.2.1", "tcp", 1, "connect", "tcp", True, 1))
        for _ in range(300):
            if stream.getvalue().count("attackalert:") >= 20:
                return
            await asyncio.sleep(0.01)

    try:
        asyncio.run(scenario())
        threads = sensor.resolver.running
    finally:
        release.set()
        mp.undo()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and all("host=" not in line for line in lines), lines
    assert {line.split()[2] for line in lines} == {f"src=198.51.100.{i + 1}" for i in range(20)}
    assert len(asked) == events.MAX_LOOKUPS and threads == events.MAX_LOOKUPS


def test_flood_guard_lines_go_through_admin(tmp_path: Path) -> None:
    """Issue 11: forged one-probe sources above FLOOD_SOURCES/s: bounded alerts, one admin line says so."""
    from sensor.probe import Probe

    path = conf(tmp_path, str(free_port()))
    path.write_text(path.read_text() + 'FLOOD_SOURCES="20"\n')
    sensor = Sensor(str(path), defaults=[])
    stream = io.StringIO()
    sensor.emitter = Emitter([StderrSink(stream)])
    assert sensor.detector.settings.flood_sources == 20
    for i in range(300):  # well within one second, in any second it starts
        sensor.on_probe(Probe(f"198.18.1.{i % 250}" if i < 250 else f"198.18.2.{i - 250}",
                              "192.0.2.1", "tcp", 1000, "syn", "atcp", False))
    log = stream.getvalue()
    assert log.count("adminalert: flood: more than 20 new unverified sources") == 1
    assert 20 <= log.count("attackalert:") <= 40  # the budget, or twice it across a second's edge
