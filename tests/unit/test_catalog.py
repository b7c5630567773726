"""The journal catalog (catalog/portsentry-sensor.catalog): journalctl -x explains an alert.

The catalog is compiled into a temporary root (journalctl --root=DIR --update-catalog),
never into the host's database; journalctl -x then reads it in a private mount namespace
(unshare -m) where that root's database is bound over /var/lib/systemd/catalog.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from journalfile import write_journal
from repopaths import REPO

from sensor.alert import FLOOD_MESSAGE_ID, MESSAGE_ID, START_MESSAGE_ID, Alert, format_admin, format_alert

CATALOG = REPO / "catalog" / "portsentry-sensor.catalog"
HOST_DB = Path("/var/lib/systemd/catalog/database")


def compiled_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib/systemd/catalog").mkdir(parents=True)
    shutil.copy(CATALOG, root / "usr/lib/systemd/catalog")
    subprocess.run(["journalctl", f"--root={root}", "--update-catalog"], check=True, timeout=60)
    return root


def explain(root: Path, journal: Path, *match: str) -> str:
    """``journalctl -x`` on ``journal`` with the catalog compiled in ``root`` (private mount namespace)."""
    script = (f"mount --bind {root}/var/lib/systemd/catalog /var/lib/systemd/catalog && "
              f"journalctl -x --no-pager --file {journal} {' '.join(match)}")
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_catalog_is_installed_by_the_package() -> None:
    install = (REPO / "packaging/debian/portsentry-sensor.install").read_text().splitlines()
    assert "catalog/portsentry-sensor.catalog usr/lib/systemd/catalog/" in install


def test_catalog_compiles_and_lists_the_alert_id(tmp_path: Path) -> None:
    before = HOST_DB.stat().st_mtime_ns if HOST_DB.exists() else None
    root = compiled_root(tmp_path)
    out = subprocess.run(["journalctl", f"--root={root}", "--list-catalog"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert f"{MESSAGE_ID} portsentry-sensor: Port scan from @PORTSENTRY_SRC@" in out
    assert f"{START_MESSAGE_ID} portsentry-sensor: portsentry-sensor started" in out
    assert f"{FLOOD_MESSAGE_ID} portsentry-sensor: portsentry-sensor: flood of probes" in out
    assert (HOST_DB.stat().st_mtime_ns if HOST_DB.exists() else None) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare -m needs root")
def test_journalctl_x_explains_an_alert(tmp_path: Path) -> None:
    root = compiled_root(tmp_path)
    message, fields = format_alert(Alert(src="198.51.100.7", dst="192.0.2.10", proto="tcp", dport=22, scan="syn",
                                         mode="atcp", verified=False, count=1))
    journal = write_journal(tmp_path / "alert.journal", [(1_764_000_000, {**fields, "MESSAGE": message})])
    out = explain(root, journal, f"MESSAGE_ID={MESSAGE_ID}")
    assert "░░ Subject: Port scan from 198.51.100.7: syn probe of tcp port 22" in out
    assert "░░ portsentry-sensor saw 198.51.100.7 probe tcp port" in out
    assert "░░     fail2ban-client set portsentry unbanip 198.51.100.7" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="unshare -m needs root")
def test_journalctl_x_explains_the_start_and_flood_lines(tmp_path: Path) -> None:
    """Issue 16: the start and flood status lines have their own catalog entries."""
    root = compiled_root(tmp_path)
    base = {"PRIORITY": "4", "SYSLOG_IDENTIFIER": "portsentry-sensor"}
    journal = write_journal(tmp_path / "status.journal", [
        (1_764_000_000, {**base, "MESSAGE_ID": START_MESSAGE_ID,
                         "MESSAGE": format_admin("started, watching tcp 3 ports bound")}),
        (1_764_000_001, {**base, "MESSAGE_ID": FLOOD_MESSAGE_ID,
                         "MESSAGE": format_admin("flood: more than 20 new unverified sources in one second")}),
    ])
    out = explain(root, journal)
    assert "░░ Subject: portsentry-sensor started" in out
    assert "░░     portsentry-sensor check" in out
    assert "░░ Subject: portsentry-sensor: flood of probes from forged-looking sources" in out
    assert "░░ held back. Every suppressed source is counted" in out
