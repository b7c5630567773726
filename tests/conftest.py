"""Shared test settings: paths into the repository."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = REPO / "tests" / "roots"
