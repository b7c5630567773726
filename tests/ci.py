"""One rule for "are we in CI?", shared by every test directory and the e2e lab.

CI sets ``CI=true``; other systems spell it ``1`` or ``yes``.  In CI a missing
prerequisite is a failure, never a silent skip: use :func:`skip_or_fail`.
Imported as ``from ci import in_ci`` (pytest puts tests/ on sys.path because
tests/conftest.py lives there; tests/e2e/lab.py adds it for bench/ as well).
"""

from __future__ import annotations

import os

import pytest

CI_VALUES = ("true", "1", "yes")


def in_ci() -> bool:
    """True when running in CI (CI=true, 1 or yes, any case)."""
    return os.environ.get("CI", "").strip().lower() in CI_VALUES


def skip_or_fail(reason: str) -> None:
    """Fail in CI, skip elsewhere, with the same reason."""
    if in_ci():
        pytest.fail(f"{reason} (CI: a skip counts as a failure)", pytrace=False)
    pytest.skip(reason)
