"""Debian's fail2ban configuration as the package ships it, never the host admin's.

Tests that run fail2ban need its stock includes (common.conf, nftables.conf, ...),
but must not read what an administrator (or an earlier ``tools/install``) added to
this machine's /etc/fail2ban: a ``jail.d/portsentry.local`` there once changed what
the jail-pack test read back.  :func:`copy_pristine` copies only the files the
fail2ban package owns (``dpkg-query -L``), and takes any conffile an admin edited
or removed (md5 different from ``dpkg-query``'s record) from the package's own
.deb instead (apt's cache, else ``apt-get download`` of the installed version).
:func:`copy_package_files` does the same for any package, and for a debootstrapped root.

Used by tests/fail2ban/conftest.py, tests/e2e/f2b.py and tools/demo.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from repopaths import FAIL2BAN_ETC

ETC = FAIL2BAN_ETC
DEB_CACHE = Path("/var/cache/portsentry-sensor-tests")


class NotPristine(RuntimeError):
    """A package's files cannot be had as the package ships them."""


def _query(*args: str, root: Path | None = None) -> str:
    admindir = ["--admindir", str(root / "var/lib/dpkg")] if root else []
    result = subprocess.run(["dpkg-query", *admindir, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        where = f" in {root}" if root else ""
        raise NotPristine(f"dpkg-query {' '.join(args)}{where}: {result.stderr.strip()} (is it installed?)")
    return result.stdout


def on_host(path: Path, root: Path | None) -> Path:
    """Where a path of the (chroot) root is seen from here."""
    return root / path.relative_to("/") if root else path


def conffile_sums(package: str = "fail2ban", etc: Path = ETC, root: Path | None = None) -> dict[Path, str]:
    """Conffile under ``etc`` -> the md5 dpkg recorded when it installed ``package``."""
    sums = {}
    for line in _query("-W", "-f=${Conffiles}\n", package, root=root).splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith(f"{etc}/"):
            sums[Path(fields[0])] = fields[1]
    return sums


def owned_files(package: str = "fail2ban", etc: Path = ETC, root: Path | None = None) -> list[Path]:
    """The files under ``etc`` that ``package`` ships (present, or conffiles an admin removed)."""
    listed = {Path(line) for line in _query("-L", package, root=root).splitlines() if line.startswith(f"{etc}/")}
    present = {p for p in listed if on_host(p, root).is_file() and not on_host(p, root).is_symlink()}
    return sorted(present | set(conffile_sums(package, etc, root)))


def changed_by_admin(package: str = "fail2ban", etc: Path = ETC, root: Path | None = None) -> list[Path]:
    """Conffiles whose content differs from what the package shipped (or that are gone)."""
    changed = []
    for path, md5 in conffile_sums(package, etc, root).items():
        where = on_host(path, root)
        if not where.is_file() or hashlib.md5(where.read_bytes()).hexdigest() != md5:
            changed.append(path)
    return changed


def package_deb(package: str = "fail2ban") -> Path:
    """The installed package's .deb: apt's cache, or downloaded once into DEB_CACHE."""
    version, arch = _query("-W", "-f=${Version} ${Architecture}", package).split()
    name = f"{package}_{version.split(':')[-1]}_{arch}.deb"
    for where in (Path("/var/cache/apt/archives"), DEB_CACHE):
        if (where / name).is_file():
            return where / name
    DEB_CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=DEB_CACHE,
                            capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0 or not (DEB_CACHE / name).is_file():
        raise NotPristine(f"cannot fetch {name} for pristine conffiles: {result.stderr.strip()}")
    return DEB_CACHE / name


def _from_deb(package: str, etc: Path, paths: list[Path], dest: Path) -> None:
    """Write the packaged versions of ``paths`` (under ``etc``) into ``dest``."""
    wanted = {f"./{p.relative_to('/')}": dest / p.relative_to(etc) for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.tar"
        with open(data, "wb") as out:
            subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package_deb(package))], stdout=out, check=True)
        with tarfile.open(data) as tar:
            for member in tar.getmembers():
                target = wanted.get(member.name)
                extracted = tar.extractfile(member) if target is not None and member.isfile() else None
                if target is not None and extracted is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(extracted.read())


def copy_package_files(package: str, etc: Path, dest: Path, root: Path | None = None) -> Path:
    """Make ``dest`` a copy of ``etc`` as ``package`` ships it, without any file it does not own.

    ``root``: read a debootstrapped root's package instead of this machine's (its edited
    conffiles cannot be restored from here: NotPristine names them)."""
    dest.mkdir(parents=True, exist_ok=True)
    changed = set(changed_by_admin(package, etc, root))
    owned = owned_files(package, etc, root)
    for path in owned:
        if path in changed:
            continue
        target = dest / path.relative_to(etc)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(on_host(path, root), target)
    if changed and root is not None:
        raise NotPristine(f"edited since {package} was installed in {root}: {', '.join(map(str, sorted(changed)))}")
    if changed:
        _from_deb(package, etc, sorted(changed), dest)
    return dest


def copy_pristine(dest: Path, root: Path | None = None) -> Path:
    """Make ``dest`` a copy of /etc/fail2ban as the package ships it; returns ``dest``."""
    for sub in ("action.d", "filter.d", "jail.d", "fail2ban.d"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    copy_package_files("fail2ban", ETC, dest, root)
    if not (dest / "filter.d/common.conf").is_file():
        raise NotPristine(f"{ETC}/filter.d/common.conf of the fail2ban package is missing")
    return dest
