"""Fixtures for the fail2ban filter tests: a throw-away fail2ban config dir with our pack."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from f2b_harness import ConfigNotPristine, pristine_config

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "fail2ban"


@pytest.fixture(scope="session")
def f2b_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fail2ban package's own /etc/fail2ban files with our filters and actions copied in.

    Only files the package owns, as installed (f2b_harness.pristine_config): never the
    host's .local files or edited conffiles, which would change what the tests check.
    """
    confdir = tmp_path_factory.mktemp("f2b") / "fail2ban"
    message = ""
    if shutil.which("fail2ban-regex") is None:
        message = "fail2ban is not installed (tools/setup-env installs it)"
    else:
        try:
            pristine_config(confdir)
        except ConfigNotPristine as exc:
            message = str(exc)
    if message:
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    for sub in ("filter.d", "action.d"):
        for item in sorted((PACK / sub).glob("*")):
            shutil.copy(item, confdir / sub / item.name)
    return confdir
