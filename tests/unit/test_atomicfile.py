"""One atomic file writer (sensor/atomicfile.py) that never follows a symbolic link.

Every command that replaces a file goes through it: fail2ban-config --write, report --output, the
metrics file, import-config --write and migrate-bans --apply (hosts.deny).  A link at the target is
refused and left as it is; a link planted at a temporary or backup name is never written through.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sensor.activity import ActivityError
from sensor.atomicfile import install_files, write_atomic
from sensor.cli import main
from sensor.metrics import FILENAME, Metrics
from sensor.report import write_output


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return path


def test_fail2ban_config_refuses_a_symlinked_output(tmp_path: Path, victim: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "sensor.conf"
    conf.write_text(f'IGNORE_FILE="{tmp_path / "ignore"}"\n')
    out = tmp_path / "portsentry.local"
    out.symlink_to(victim)
    code = main(["fail2ban-config", "-c", str(conf), "--defaults", str(tmp_path / "none"), "-o", str(out),
                 "--journalmatch", "_UID=999", "--write"])
    err = capsys.readouterr().err
    assert code != 0 and "symbolic link" in err and len(err.strip().splitlines()) == 1
    assert out.is_symlink() and victim.read_text() == "precious\n"


def test_report_output_refuses_a_symlink(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "report.json"
    out.symlink_to(victim)
    with pytest.raises(ActivityError, match="symbolic link"):
        write_output("{}\n", str(out))
    assert out.is_symlink() and victim.read_text() == "precious\n"


def test_report_output_never_writes_through_a_link_at_a_temporary_name(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "report.json"
    (tmp_path / f"report.json.tmp{os.getpid()}").symlink_to(victim)  # the old writer's fixed name
    write_output("{}\n", str(out))
    assert out.read_text() == "{}\n" and victim.read_text() == "precious\n"


def test_metrics_never_write_through_a_link_at_a_temporary_name(tmp_path: Path, victim: Path) -> None:
    (tmp_path / f".{FILENAME}.{os.getpid()}.tmp").symlink_to(victim)  # the old writer's fixed name
    Metrics().write(str(tmp_path), "portsentry_sensor_up 1\n")
    assert (tmp_path / FILENAME).read_text() == "portsentry_sensor_up 1\n"
    assert victim.read_text() == "precious\n"


def test_metrics_refuse_a_symlinked_file(tmp_path: Path, victim: Path) -> None:
    (tmp_path / FILENAME).symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        Metrics().write(str(tmp_path), "portsentry_sensor_up 1\n")
    assert (tmp_path / FILENAME).is_symlink() and victim.read_text() == "precious\n"


def test_install_refuses_a_symlink_target_and_leaves_no_temporary_file(tmp_path: Path, victim: Path) -> None:
    """migrate's writer refused already before it moved to sensor/atomicfile.py; kept that way."""
    target = tmp_path / "portsentry.conf"
    target.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        write_atomic(str(target), "new\n", backup_suffix=".bak")
    with pytest.raises(OSError, match="symbolic link"):
        install_files([(str(target), "new\n")], ".bak")
    assert target.is_symlink() and victim.read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["portsentry.conf", "victim"]


def test_write_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "file"
    write_atomic(str(target), "one\n")
    assert target.read_text() == "one\n" and target.stat().st_mode & 0o777 == 0o644
    target.chmod(0o640)
    write_atomic(str(target), "two\n")
    assert target.read_text() == "two\n" and target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_atomic_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        write_atomic(str(tmp_path), "x\n")
