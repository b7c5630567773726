"""Write a journal file for tests: entries in journal export format, fed to systemd-journal-remote.

systemd-journal-remote (Debian package systemd-journal-remote) imports the export
format as-is, trusted fields and timestamps included, so a test can place alerts
at known times under a known _SYSTEMD_UNIT/_UID without a running journald.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
BOOT_ID = "0123456789abcdef0123456789abcdef"


def export_entry(when: float, fields: Mapping[str, str]) -> bytes:
    """One entry in export format (text fields only; no newlines in values)."""
    usec = int(when * 1_000_000)
    lines = [f"__REALTIME_TIMESTAMP={usec}", f"__MONOTONIC_TIMESTAMP={usec}", f"_BOOT_ID={BOOT_ID}"]
    for name, value in fields.items():
        assert "\n" not in value, name
        lines.append(f"{name}={value}")
    return ("\n".join(lines) + "\n\n").encode()


def write_journal(path: Path, entries: Iterable[tuple[float, Mapping[str, str]]]) -> Path:
    """Write ``entries`` (time, fields) to ``path``, which must end in .journal."""
    assert path.suffix == ".journal"
    data = b"".join(export_entry(when, fields) for when, fields in entries)
    subprocess.run([JOURNAL_REMOTE, f"--output={path}", "-"], input=data, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return path


def write_journal_stream(path: Path, chunks: Iterable[bytes]) -> Path:
    """Like write_journal, for many entries: export-format chunks streamed to journal-remote."""
    proc = subprocess.Popen([JOURNAL_REMOTE, f"--output={path}", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    for chunk in chunks:
        proc.stdin.write(chunk)
    proc.stdin.close()
    assert proc.wait(timeout=600) == 0
    return path
