"""sensor/fail2banconfig.py: the rendered jail.d/portsentry.local, its diff, --write, bad input."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from sensor import fail2banconfig
from sensor.fail2banconfig import JailChoices, JailConfigError, duration_seconds, ignoreip, render, validate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portsentry-sensor")
    fail2banconfig.add_commands(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture
def sensor_conf(tmp_path: Path) -> Path:
    """A sensor configuration whose IGNORE_FILE lists a network, an address and loopback again."""
    ignore = tmp_path / "portsentry.ignore"
    ignore.write_text("# ours\n192.0.2.0/24\n2001:db8::/64\n198.51.100.7\n127.0.0.1\n0.0.0.0\n")
    conf = tmp_path / "portsentry.conf"
    conf.write_text(f'TCP_MODE="atcp"\nIGNORE_FILE="{ignore}"\n')
    return conf


def _run(args: list[str]) -> int:
    parsed = _parser().parse_args(["fail2ban-config", *args])
    code: int = parsed.func(parsed)
    return code


def test_durations() -> None:
    assert duration_seconds("600", "bantime") == 600
    assert duration_seconds("10m", "bantime") == 600
    assert duration_seconds("1h30m", "bantime") == 5400
    assert duration_seconds("1w", "bantime") == 604800
    for bad in ("", "-1", "0", "10 m", "1x", "10m\nbantime = -1"):
        with pytest.raises(JailConfigError):
            duration_seconds(bad, "bantime")


def test_ignoreip_is_loopback_plus_the_ignore_list_without_covered_entries() -> None:
    nets = tuple(ipaddress.ip_network(n) for n in ("192.0.2.0/24", "192.0.2.7/32", "127.0.0.1/32",
                                                   "2001:db8::5/128"))
    assert ignoreip(nets) == ("127.0.0.0/8", "::1", "192.0.2.0/24", "2001:db8::5")


def test_validate_refuses_forgeable_journalmatch_and_values_that_would_add_settings() -> None:
    with pytest.raises(JailConfigError, match="forged"):
        validate(JailChoices(journalmatch="SYSLOG_IDENTIFIER=portsentry-sensor"))
    with pytest.raises(JailConfigError):
        validate(JailChoices(journalmatch="_UID=999\nbantime = 1"))
    with pytest.raises(JailConfigError):
        validate(JailChoices(logpath="/var/log/syslog\nenabled = false"))
    with pytest.raises(JailConfigError):
        validate(JailChoices(mode="some"))
    with pytest.raises(JailConfigError):
        validate(JailChoices(escalate_after=0))
    assert validate(JailChoices(journalmatch="_UID=999")) == []


def test_validate_warns_about_file_backend_and_long_windows() -> None:
    warnings = validate(JailChoices(backend="file", escalate_window="1w"))
    assert any("dbpurgeage" in w for w in warnings)
    assert any("any local user" in w for w in warnings)


def test_render_systemd() -> None:
    text = render(JailChoices(bantime="1h", escalate_after=3, journalmatch="_UID=999",
                              ignoreip=("127.0.0.0/8", "::1", "192.0.2.0/24"),
                              ignore_file="/etc/portsentry-sensor/portsentry.ignore"))
    assert "[portsentry]\n" in text
    assert "\nbantime = 1h\n" in text and "\nescalate_after = 3\n" in text
    assert "\nbackend = systemd\n" in text and "\njournalmatch = _UID=999\n" in text
    assert "logpath" not in text
    assert "\nignoreip = 127.0.0.0/8\n           ::1\n           192.0.2.0/24\n" in text
    assert "\n\n\n" not in text


def test_render_systemd_unit_match_leaves_the_shipped_one() -> None:
    assert "journalmatch =" not in render(JailChoices(ignoreip=("127.0.0.0/8",)))


def test_render_file_backend_says_it_is_less_safe() -> None:
    text = render(JailChoices(backend="file", logpath="/var/log/messages", ignoreip=("::1",)))
    assert "\nbackend = auto\nlogpath = /var/log/messages\n" in text
    assert "LESS SAFE" in text and "\njournalmatch =\n" in text


def test_default_journalmatch(tmp_path: Path) -> None:
    assert fail2banconfig.default_journalmatch(str(tmp_path)) == ""
    assert fail2banconfig.default_journalmatch(str(tmp_path / "none"), user="root") == "_UID=0"
    assert fail2banconfig.default_journalmatch(str(tmp_path / "none"), user="no-such-user-x") == ""


def test_shows_diff_and_writes_only_with_write(sensor_conf: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "portsentry.local"
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", "_UID=999"]) == 0
    shown = capsys.readouterr().out
    assert "+ignoreip = 127.0.0.0/8" in shown and "+           198.51.100.7" in shown
    assert "+           127.0.0.1" not in shown
    assert "not written" in shown and not out.exists()
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", "_UID=999", "--write"]) == 0
    assert out.exists() and oct(out.stat().st_mode & 0o777) == "0o644"
    capsys.readouterr()
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", "_UID=999"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", "_UID=999",
                 "--mode", "verified"]) == 0
    diff = capsys.readouterr().out
    assert "-mode = all\n+mode = verified\n" in diff
    assert "mode = all" in out.read_text()


def test_bad_input_is_one_line_and_exit_2(sensor_conf: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.local"
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--bantime", "forever"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bantime" in err
    with pytest.raises(SystemExit) as exc:
        _run(["-c", str(sensor_conf), "--backend", "rsyslog"])
    assert exc.value.code == 2
    assert not out.exists()


def test_missing_sensor_config_is_a_config_error(tmp_path: Path) -> None:
    from sensor.config import ConfigError
    with pytest.raises(ConfigError):
        _run(["-c", str(tmp_path / "none.conf"), "-o", str(tmp_path / "x.local")])


def test_unwritable_output_is_one_line_exit_1(sensor_conf: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # As under systemd whatever the host runs: no "systemd is not running" warning line.
    monkeypatch.setattr(fail2banconfig, "RUN_SYSTEMD", str(tmp_path))
    out = tmp_path / "no-such-dir" / "portsentry.local"
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--write"]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_warns_when_nothing_would_match(sensor_conf: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """No systemd, no sensor user: the unit match would never match; say so."""
    monkeypatch.setattr(fail2banconfig, "RUN_SYSTEMD", str(tmp_path / "no-systemd"))
    assert _run(["-c", str(sensor_conf), "-o", str(tmp_path / "x.local"), "--journalmatch", "unit"]) == 0
    assert "will match nothing" in capsys.readouterr().err


@pytest.mark.parametrize("match", [
    "_COMM=portsentry-sensor", "_EXE=/usr/sbin/portsentry-sensor", "_CMDLINE=portsentry-sensor",
    "_SYSTEMD_USER_UNIT=portsentry-sensor.service", "_TRANSPORT=journal", "_GID=998",
    "_HOSTNAME=sensor", "_SYSTEMD_SLICE=system.slice", "SYSLOG_IDENTIFIER=portsentry-sensor",
    "_UID=nobody", "_PID=12a", "_SYSTEMD_UNIT=", "_SYSTEMD_UNIT=a b.service"])
def test_journalmatch_refuses_fields_a_local_user_can_choose(match: str) -> None:
    """Issue 12 item 12: only _SYSTEMD_UNIT=, _UID=, _PID= name the sensor and nobody else."""
    with pytest.raises(JailConfigError, match="_SYSTEMD_UNIT=, _UID= or _PID="):
        validate(JailChoices(journalmatch=match))


@pytest.mark.parametrize("match", ["_SYSTEMD_UNIT=portsentry-sensor.service", "_UID=998", "_PID=4242",
                                   "_SYSTEMD_UNIT=portsentry-sensor@eth0.service"])
def test_journalmatch_accepts_fields_only_journald_and_root_decide(match: str) -> None:
    assert validate(JailChoices(journalmatch=match)) == []


@pytest.mark.parametrize("match", ["_COMM=portsentry-sensor", "_SYSTEMD_USER_UNIT=portsentry-sensor.service",
                                   "_TRANSPORT=syslog", "_EXE=/usr/bin/python3"])
def test_forgeable_journalmatch_is_one_line_exit_2_nothing_written(
        match: str, sensor_conf: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "portsentry.local"
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", match, "--write"]) == 2
    captured = capsys.readouterr()
    field_name = match.split("=", 1)[0]
    assert captured.err.count("\n") == 1 and field_name in captured.err and "--journalmatch" in captured.err
    assert captured.out == "" and not out.exists()


def _assert_refused(sensor_conf: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = out.read_bytes() if out.is_file() else None
    assert _run(["-c", str(sensor_conf), "-o", str(out), "--journalmatch", "_UID=999", "--write"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and str(out) in captured.err, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    if before is not None:
        assert out.read_bytes() == before
    assert not list(out.parent.glob(".portsentry.local.*"))
    return captured.err


def test_output_that_is_a_directory_is_one_line_exit_2(sensor_conf: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12 item 10: --output naming a directory was a traceback."""
    out = tmp_path / "portsentry.local"
    out.mkdir()
    assert "directory" in _assert_refused(sensor_conf, out, capsys)
    assert out.is_dir() and not list(out.iterdir())


def test_output_that_is_not_utf8_is_one_line_exit_2(sensor_conf: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "portsentry.local"
    out.write_bytes(b"[portsentry]\nbantime = 1h\n# caf\xe9\n")
    assert "UTF-8" in _assert_refused(sensor_conf, out, capsys)


def test_output_that_is_unreadable_is_one_line_exit_2(sensor_conf: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """EACCES (faked: the tests run as root, who reads a mode-000 file anyway)."""
    out = tmp_path / "portsentry.local"
    out.write_text("[portsentry]\n")
    out.chmod(0)
    real_read_text = Path.read_text

    def denied(self: Path, *args: object, **kwargs: object) -> str:
        if self == out:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", denied)
    assert "Permission denied" in _assert_refused(sensor_conf, out, capsys)
