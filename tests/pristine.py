"""Debian's fail2ban configuration as the package ships it, never the host admin's.

Tests that run fail2ban need its stock includes (common.conf, nftables.conf, ...),
but must not read what an administrator (or an earlier ``tools/install``) added to
this machine's /etc/fail2ban: a ``jail.d/portsentry.local`` there once changed what
the jail-pack test read back.  :func:`copy_pristine` copies only the files the
fail2ban package owns (``dpkg-query -L``), and takes any conffile an admin edited
or removed (md5 different from ``dpkg-query``'s record) from the package's own
.deb instead (apt's cache, else ``apt-get download`` of the installed version).
:func:`copy_package_files` does the same for any package (crowdsec's patterns).

Used by tests/filter/conftest.py, tests/e2e/f2b.py, tests/e2e/crowdsec.py and tools/demo.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

ETC = Path("/etc/fail2ban")
DEB_CACHE = Path("/var/cache/portsentry-sensor-tests")


def _query(*args: str) -> str:
    result = subprocess.run(["dpkg-query", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"dpkg-query {' '.join(args)}: {result.stderr.strip()} (is the package installed?)")
    return result.stdout


def conffile_sums(package: str = "fail2ban", etc: Path = ETC) -> dict[Path, str]:
    """Conffile under ``etc`` -> the md5 dpkg recorded when it installed ``package``."""
    sums = {}
    for line in _query("-W", "-f=${Conffiles}\n", package).splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith(f"{etc}/"):
            sums[Path(fields[0])] = fields[1]
    return sums


def owned_files(package: str = "fail2ban", etc: Path = ETC) -> list[Path]:
    """The files under ``etc`` that ``package`` ships (present or removed by an admin)."""
    listed = {Path(line) for line in _query("-L", package).splitlines() if line.startswith(f"{etc}/")}
    return sorted({p for p in listed if p.is_file()} | set(conffile_sums(package, etc)))


def changed_by_admin(package: str = "fail2ban", etc: Path = ETC) -> list[Path]:
    """Conffiles whose content differs from what the package shipped (or that are gone)."""
    changed = []
    for path, md5 in conffile_sums(package, etc).items():
        if not path.is_file() or hashlib.md5(path.read_bytes()).hexdigest() != md5:
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
        raise RuntimeError(f"cannot fetch {name} for pristine conffiles: {result.stderr.strip()}")
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


def copy_package_files(package: str, etc: Path, dest: Path) -> Path:
    """Make ``dest`` a copy of ``etc`` as ``package`` ships it, without any file it does not own."""
    dest.mkdir(parents=True, exist_ok=True)
    changed = set(changed_by_admin(package, etc))
    owned = owned_files(package, etc)
    for path in owned:
        if path in changed or not path.is_file():
            continue
        target = dest / path.relative_to(etc)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    missing = sorted(changed | {p for p in owned if not p.is_file()})
    if missing:
        _from_deb(package, etc, missing, dest)
    return dest


def copy_pristine(dest: Path) -> Path:
    """Make ``dest`` a copy of /etc/fail2ban as the package ships it; returns ``dest``."""
    for sub in ("action.d", "filter.d", "jail.d", "fail2ban.d"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    return copy_package_files("fail2ban", ETC, dest)
