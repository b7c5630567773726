"""The fail2ban config the tests use is Debian's, never what an admin left in /etc/fail2ban."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pristine
import pytest


def test_only_packaged_files_are_copied(f2b_confdir: Path, tmp_path: Path) -> None:
    """No .local and no file the fail2ban package does not own reaches the copy."""
    copy = pristine.copy_pristine(tmp_path / "conf")
    owned = {p.relative_to(pristine.ETC) for p in pristine.owned_files()}
    copied = {p.relative_to(copy) for p in copy.rglob("*") if p.is_file()}
    assert copied and copied <= owned, sorted(copied - owned)
    assert not [p for p in copied if p.suffix == ".local"]
    assert Path("jail.conf") in copied and Path("filter.d/common.conf") in copied


def test_an_edited_conffile_comes_from_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A conffile the admin changed is taken from fail2ban's .deb: its md5 is dpkg's record again."""
    jail_conf = pristine.ETC / "jail.conf"
    monkeypatch.setattr(pristine, "changed_by_admin", lambda *_: [jail_conf])
    copy = pristine.copy_pristine(tmp_path / "conf")
    assert hashlib.md5((copy / "jail.conf").read_bytes()).hexdigest() == pristine.conffile_sums()[jail_conf]
