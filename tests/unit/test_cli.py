"""sensor/cli.py and sensor/check.py: exit codes, one-line errors, the printed plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from repopaths import REPO

from sensor import __version__
from sensor.check import render_plan
from sensor.cli import main
from sensor.config import load_config
from sensor.portplan import build_plan


def test_check_bad_port_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "portsentry.conf"
    conf.write_text('# x\nTCP_MODE="tcp"\nTCP_PORTS="1,70000"\n')
    assert main(["check", "--config", str(conf), "--defaults", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err == f"portsentry-sensor: {conf}:3: TCP_PORTS: '70000' is not a port (1-65535)\n"


def test_check_bad_ignore_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ignore = tmp_path / "ignore"
    ignore.write_text("192.0.2.1\nnonsense\n")
    conf = tmp_path / "portsentry.conf"
    conf.write_text(f'IGNORE_FILE="{ignore}"\n')
    assert main(["check", "-c", str(conf)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"{ignore}:2: IGNORE_FILE: 'nonsense' is not an address or CIDR")


def test_check_prints_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "-c", str(REPO / "etc" / "portsentry.conf")]) == 0
    out = capsys.readouterr().out
    assert "TCP: mode atcp (raw sockets, every unused port; from " in out
    assert "skipped 113,139: excluded (ADVANCED_EXCLUDE)" in out


def test_render_plan_shows_busy_ports() -> None:
    config = load_config(str(REPO / "tests" / "roots" / "debian-stock" / "etc" / "portsentry" / "portsentry.conf"),
                         [str(REPO / "tests" / "roots" / "debian-stock" / "etc" / "default" / "portsentry")])
    plan = build_plan(config, {111}, set())
    lines = render_plan(config, plan, {"tcp": {111}, "udp": set()})
    defaults = REPO / "tests" / "roots" / "debian-stock" / "etc" / "default" / "portsentry"
    assert f"TCP: mode tcp (bound sockets; from {defaults}:2)" in lines  # where the mode came from
    assert "    skipped 111: already in use by another program" in lines


def test_version_and_help() -> None:
    out = subprocess.run([sys.executable, "-m", "sensor", "--version"], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == f"portsentry-sensor {__version__}"
    helptext = subprocess.run([sys.executable, "-m", "sensor", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "fail2ban-client set portsentry unbanip" in helptext.stdout and helptext.returncode == 0


def test_bad_arguments_exit_2_without_traceback() -> None:
    out = subprocess.run([sys.executable, "-m", "sensor", "run", "--bogus"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert main([]) == 2


def test_run_with_missing_config_exit_2(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "sensor", "run", "-c", str(tmp_path / "x.conf")], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.strip() == f"portsentry-sensor: {tmp_path}/x.conf: No such file or directory"


def test_a_broken_command_module_is_an_error_not_a_missing_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13: the command modules are ours; an ImportError in one must not make its command vanish."""
    import importlib

    real = importlib.import_module

    def broken(name: str, package: str | None = None) -> object:
        if name == "sensor.report":
            raise ImportError("broken on purpose")
        return real(name, package)
    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(ImportError, match="broken on purpose"):
        main(["report", "--help"])
