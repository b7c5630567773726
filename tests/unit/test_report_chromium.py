"""report --format html opened in headless Chromium (Debian's chromium): the charts render, no console errors.

The page is loaded from a file with every host name unresolvable, so a fetch from
anywhere would fail; a probe script appended to a copy measures the three inline
SVG charts and counts the hourly bars into the document title, which --dump-dom
prints.  A copy with a planted script error shows that console errors are seen.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_report import run, world  # noqa: F401  (the fixture)

CHROMIUM = shutil.which("chromium")
PROBE = ('<script>document.title = "probe:" + Array.from(document.querySelectorAll("svg")).map('
         's => Math.round(s.getBoundingClientRect().width) + "x" + Math.round(s.getBoundingClientRect().height))'
         '.join(",") + ";bars:" + document.querySelectorAll("#chart-hourly rect.rect").length;</script>')


def chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """(document title after load, console lines) for ``page``; at most 90 s."""
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (tools/setup-env installs it)")
        pytest.skip("chromium is not installed")
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    title = re.search(r"<title>(probe:[^<]*)</title>", result.stdout)
    return (title.group(1) if title else ""), [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_html_renders_in_chromium(world: list[str], tmp_path: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    code, _, err = run(["report", "--since", "2026-12-01T10:00", "--until", "2026-12-01T16:00",
                        "--format", "html", "-o", str(page), *world], capsys)
    assert (code, err) == (0, "")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    title, console = chromium(probed, tmp_path / "profile")
    assert console == []
    assert title == "probe:900x320,900x320,450x320;bars:6"     # three charts laid out, one bar an hour
    planted = tmp_path / "planted.html"
    planted.write_text(page.read_text().replace("</body>", "<script>noSuchFunction();</script></body>"))
    _, console = chromium(planted, tmp_path / "profile")
    assert any("noSuchFunction" in line for line in console)
