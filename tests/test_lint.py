"""Lint and types are tests: ruff over everything, mypy --strict over sensor/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ci import skip_or_fail
from repopaths import REPO

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        skip_or_fail(f"{name} is not installed in {BIN} (tools/setup-env installs it)")
    return str(path)


def test_ruff() -> None:
    result = subprocess.run([tool("ruff"), "check", "sensor", "tests", "bench", "fail2ban/action.d"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([tool("mypy"), "--config-file", "setup.cfg"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
