"""sensor/metrics.py: the Prometheus textfile (content, atomic write, one warning on failure, METRICS_DIR)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sensor import metrics
from sensor.alert import Alert
from sensor.config import ConfigError, parse_text
from sensor.flood import FloodGuard
from sensor.metrics import FILENAME, Metrics
from sensor.portplan import PortPlan


class FakeListeners:
    def watched(self, proto: str) -> list[int]:
        return [1, 79, 111] if proto == "tcp" else [7]


class FakeDetector(list[int]):
    def __init__(self) -> None:
        super().__init__([1, 2])
        self.flood = FloodGuard(budget=2, ports=5)


def fake_daemon(directory: str, capture: Any = None) -> SimpleNamespace:
    said: list[str] = []
    return SimpleNamespace(
        loaded=SimpleNamespace(config=SimpleNamespace(metrics_dir=directory)), detector=FakeDetector(),
        capture=capture, listeners=FakeListeners(), reloads=3,
        plan=PortPlan(tcp_raw=frozenset(range(1000, 1100)), tcp_raw_mode="atcp"),
        admin=lambda text, priority=5: said.append(text), said=said)


def alert(scan: str = "syn", verified: bool = False) -> Alert:
    return Alert(src="198.51.100.7", dst="192.0.2.10", proto="tcp", dport=22, scan=scan,
                 mode="atcp" if scan == "syn" else "tcp", verified=verified, count=1)


def test_textfile_content(tmp_path: Path) -> None:
    m = Metrics(start_time=1_764_000_000.0)
    for _ in range(3):
        m.alert(alert())
    m.alert(alert("connect", verified=True))
    capture = SimpleNamespace(stats={"packets": 1234, "dropped": 5}, kernel_drops=lambda: 5)
    daemon = fake_daemon(str(tmp_path), capture)
    m.tick(daemon, now=100.0)
    text = (tmp_path / FILENAME).read_text()
    for line in ('portsentry_sensor_alerts_total{proto="tcp",scan="syn",mode="atcp",verified="no"} 3',
                 'portsentry_sensor_alerts_total{proto="tcp",scan="connect",mode="tcp",verified="yes"} 1',
                 "portsentry_sensor_sources_tracked 2", "portsentry_sensor_packets_total 1234",
                 "portsentry_sensor_kernel_drops_total 5",
                 'portsentry_sensor_watched_ports{proto="tcp",mode="tcp"} 3',
                 'portsentry_sensor_watched_ports{proto="tcp",mode="atcp"} 100',
                 'portsentry_sensor_watched_ports{proto="udp",mode="udp"} 1',
                 "portsentry_sensor_reloads_total 3", "portsentry_sensor_start_time_seconds 1764000000.000",
                 "# TYPE portsentry_sensor_alerts_total counter"):
        assert line in text.splitlines(), line
    assert oct((tmp_path / FILENAME).stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]       # no temporary left behind


def flood_lines(daemon: SimpleNamespace) -> list[str]:
    text = Metrics().render(daemon)
    return [line for line in text.splitlines() if line.startswith("portsentry_sensor_flood_")]


def test_flood_suppression_counters_survive_the_next_flood(tmp_path: Path) -> None:
    """Counters since start (the guard's own totals restart with each flood), and a gauge for a flood now."""
    daemon = fake_daemon(str(tmp_path))
    guard = daemon.detector.flood
    assert flood_lines(daemon) == ["portsentry_sensor_flood_suppressed_total 0",
                                   "portsentry_sensor_flood_episodes_total 0", "portsentry_sensor_flood_active 0"]
    for start in (100.0, 200.0):                     # two floods, 3 suppressed sources in each
        for n in range(3):
            guard.new_source(f"198.51.100.{n}", 22, start)
        for _ in range(3):
            guard.suppress()
        assert guard.active
        assert "portsentry_sensor_flood_active 1" in flood_lines(daemon)
        guard.tick(start + 10)                       # quiet: the flood ends
    assert flood_lines(daemon) == ["portsentry_sensor_flood_suppressed_total 6",
                                   "portsentry_sensor_flood_episodes_total 2", "portsentry_sensor_flood_active 0"]
    assert "# TYPE portsentry_sensor_flood_suppressed_total counter" in Metrics().render(daemon)


def test_written_every_interval_only(tmp_path: Path) -> None:
    m = Metrics()
    daemon = fake_daemon(str(tmp_path))
    m.tick(daemon, now=100.0)
    (tmp_path / FILENAME).unlink()
    m.tick(daemon, now=100.0 + metrics.INTERVAL - 0.1)
    assert not (tmp_path / FILENAME).exists()
    m.tick(daemon, now=100.0 + metrics.INTERVAL)
    assert (tmp_path / FILENAME).exists()


def test_unwritable_directory_is_said_once(tmp_path: Path) -> None:
    m = Metrics()
    daemon = fake_daemon(str(tmp_path / "missing"))
    for second in range(0, 30, 5):
        m.tick(daemon, now=float(second))
    assert len(daemon.said) == 1 and daemon.said[0].startswith(f"warning: metrics not written: {tmp_path}/missing")


def test_off_and_auto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics.resolve_dir("") == ""
    monkeypatch.setattr(metrics, "NODE_EXPORTER_DIR", str(tmp_path / "node-exporter"))
    monkeypatch.setattr(metrics, "PACKAGED_DIR", str(tmp_path / "state" / "metrics"))
    assert metrics.resolve_dir("auto") == ""
    (tmp_path / "node-exporter").mkdir()
    assert metrics.resolve_dir("auto") == str(tmp_path / "node-exporter")
    if os.geteuid() != 0:
        (tmp_path / "node-exporter").chmod(0o555)
        assert metrics.resolve_dir("auto") == ""


def test_metrics_dir_key(tmp_path: Path) -> None:
    settings, _ = parse_text('METRICS_DIR="relative/dir"\n', "x.conf")
    from sensor.config import build_config
    with pytest.raises(ConfigError, match="METRICS_DIR"):
        build_config(settings, "x.conf", [])
    ok, _ = parse_text(f'METRICS_DIR="{tmp_path}"\n', "x.conf")
    assert build_config(ok, "x.conf", []).metrics_dir == str(tmp_path)


def test_auto_prefers_the_packaged_units_state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the packaged unit (StateDirectory=portsentry-sensor/metrics) auto writes there: the package
    links the file into node-exporter's directory, which the sandboxed sensor cannot write."""
    monkeypatch.setattr(metrics, "NODE_EXPORTER_DIR", str(tmp_path / "node-exporter"))
    monkeypatch.setattr(metrics, "PACKAGED_DIR", str(tmp_path / "state" / "metrics"))
    (tmp_path / "node-exporter").mkdir()
    (tmp_path / "state" / "metrics").mkdir(parents=True)
    assert metrics.resolve_dir("auto") == str(tmp_path / "state" / "metrics")
