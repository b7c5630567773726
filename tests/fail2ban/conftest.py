"""Fixtures for the fail2ban filter tests: a throw-away fail2ban config dir with our pack."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ci import skip_or_fail
from pristine import copy_pristine
from repopaths import FAIL2BAN_ETC as SYSTEM_CONF
from repopaths import PACK


@pytest.fixture(scope="session")
def f2b_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's pristine /etc/fail2ban (for common.conf; tests/pristine.py) with our filters copied over it."""
    if shutil.which("fail2ban-regex") is None or not (SYSTEM_CONF / "filter.d/common.conf").exists():
        skip_or_fail("fail2ban is not installed (tools/setup-env installs it)")
    confdir = copy_pristine(tmp_path_factory.mktemp("f2b") / "fail2ban")
    for sub in ("filter.d", "action.d"):
        for item in sorted((PACK / sub).glob("*")):
            shutil.copy(item, confdir / sub / item.name)
    return confdir
