"""`make demo` (tools/demo) tells the whole story and leaves nothing behind (issue 4)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from lab import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


def test_demo_runs_the_story_and_cleans_up(journald: object) -> None:
    """Scan, alert, ban (status and nft), blocked, unbanip, allowed again; namespaces gone."""
    result = subprocess.run([str(REPO_ROOT / "tools" / "demo"), "--fast"], capture_output=True,
                            text=True, timeout=200, check=False)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    story = ["attackalert: src=192.0.2.2 ", "Banned IP list:\t192.0.2.2", "elements = { 192.0.2.2 }",
             "Connection refused", "set portsentry unbanip 192.0.2.2", "done: nothing left behind"]
    positions = [out.find(text) for text in story]
    missing = [text for text, pos in zip(story, positions, strict=True) if pos < 0]
    assert not missing, f"missing from the story: {missing}"
    assert positions == sorted(positions), "the story is told out of order"
    assert out.count("HTTP/1.0 200 OK") == 2, "the page must load before the ban and after unbanip"
    assert not Path("/run/netns/psdemo-v").exists() and not Path("/run/netns/psdemo-a").exists()
