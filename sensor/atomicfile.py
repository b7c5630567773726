"""One atomic file writer that never follows a symbolic link.

A new file is written next to its target (``mkstemp``: O_CREAT|O_EXCL, and
O_NOFOLLOW where the platform has it), flushed to disk and renamed over the
target in one step, so a reader sees the old text or the new, never half.  A
target that is a symbolic link, a directory or anything but a regular file is
refused (OSError) rather than replaced or written through; backups are created
with O_EXCL|O_NOFOLLOW, so a file or link planted at a backup's name is an error.
Used by ``fail2ban-config``, ``import-config``, ``migrate-bans``, ``report
--output`` and the metrics file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Sequence


def _existing_mode(path: str) -> int | None:
    """Mode of a regular file at ``path`` (None if absent); never follows a link."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise OSError(errno.ELOOP, "is a symbolic link; not replacing it", path)
    if stat.S_ISDIR(info.st_mode):
        raise OSError(errno.EISDIR, "is a directory", path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "is not a regular file", path)
    return info.st_mode & 0o7777


def stage_file(path: str, text: str, default_mode: int = 0o644) -> str:
    """Write ``text`` to a new temporary file next to ``path`` (same mode), on disk; returns its name.

    Refuses (OSError) if ``path`` is a link, a directory or anything but a regular file.  The
    directory must exist.
    """
    mode = _existing_mode(path)
    directory = os.path.dirname(path) or "."
    handle, temp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            os.fchmod(out.fileno(), default_mode if mode is None else mode)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    return temp


def backup_file(path: str, suffix: str) -> str:
    """Copy a regular file to ``path+suffix`` (a new file); "" if there is nothing to keep.

    Never follows a link: the source is opened with O_NOFOLLOW and the copy is created with
    O_CREAT|O_EXCL|O_NOFOLLOW, so a file or link planted at the backup's name is an error.
    """
    if _existing_mode(path) is None:
        return ""
    backup = path + suffix
    source = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(source)
        try:
            target = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600)
        except FileExistsError:
            raise OSError(errno.EEXIST, "exists already (a file or a link); not writing a backup through "
                          "it", backup) from None
        try:
            while chunk := os.read(source, 65536):
                os.write(target, chunk)
            with contextlib.suppress(PermissionError):
                os.fchown(target, info.st_uid, info.st_gid)
            os.fchmod(target, info.st_mode & 0o7777)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        except BaseException:
            os.close(target)
            os.unlink(backup)
            raise
        os.close(target)
    finally:
        os.close(source)
    return backup


def write_atomic(path: str, text: str, default_mode: int = 0o644, backup_suffix: str = "") -> str:
    """Replace ``path`` by a file holding ``text`` in one rename; returns the backup's name or "".

    A new file gets ``default_mode``, a replaced one keeps its mode.  With ``backup_suffix`` an
    existing file is copied to ``path+suffix`` first.  Raises OSError (a link, a directory or
    anything but a regular file at ``path`` is refused); nothing is left behind on failure.
    """
    temp = stage_file(path, text, default_mode)
    try:
        backup = backup_file(path, backup_suffix) if backup_suffix else ""
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _sync_directory(path)
    return backup


def _sync_directory(path: str) -> None:
    """Put the rename on disk too (best effort)."""
    with contextlib.suppress(OSError):
        handle = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def _undo_install(staged: dict[str, str], backups: dict[str, str], done: list[str]) -> None:
    """Put back what :func:`install_files` replaced; remove its temporary files and new backups."""
    for path in reversed(done):
        with contextlib.suppress(OSError):
            if backups[path]:
                os.replace(backups[path], path)
            else:
                os.unlink(path)
    leftovers = [temp for path, temp in staged.items() if path not in done]
    leftovers += [backup for path, backup in backups.items() if backup and path not in done]
    for name in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def install_files(files: Sequence[tuple[str, str]], backup_suffix: str,
                  check: Callable[[dict[str, str]], None] = lambda staged: None) -> list[tuple[str, str]]:
    """Install every (path, text), or none of them; returns (path, backup) pairs.

    All files are staged and ``check`` (given path -> staged file) runs before anything is replaced;
    if a replacement fails, the files already replaced are put back.  Raises OSError or what
    ``check`` raises.
    """
    staged: dict[str, str] = {}
    backups: dict[str, str] = {}
    done: list[str] = []
    try:
        for path, text in files:
            staged[path] = stage_file(path, text)
        check(staged)
        for path, _ in files:
            backups[path] = backup_file(path, backup_suffix)
        for path, _ in files:
            os.replace(staged[path], path)
            done.append(path)
    except BaseException:
        _undo_install(staged, backups, done)
        raise
    for path, _ in files:
        _sync_directory(path)
    return [(path, backups[path]) for path, _ in files]
