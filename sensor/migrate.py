"""Coming from PortSentry: ``import-config`` and ``migrate-bans``.

``import-config`` turns /etc/portsentry (plus /etc/default/portsentry) into a
portsentry-sensor configuration and reports every key it mapped, changed or
dropped (:mod:`sensor.legacyconf` does the translation).  ``migrate-bans``
finds the never-expiring blocks PortSentry left behind (:mod:`sensor.legacy`
recognises them), prints the plan, and with ``--apply`` hands each recent
address to fail2ban (``set portsentry banip``) *before* removing the old block,
so nobody slips through and every ban now expires.  All system access goes
through :class:`System` so tests can use sample trees and a fake runner.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sensor import legacy
from sensor.config import ConfigError, load_config, read_file
from sensor.ignore import IgnoreList, Network, local_networks
from sensor.legacyconf import import_config, scan

DEFAULT_FROM = "/etc/portsentry"
DEFAULT_DEFAULTS = "/etc/default/portsentry"
DEFAULT_TO = "/etc/portsentry-sensor/portsentry.conf"
LEGACY_HISTORY = "/var/lib/portsentry/portsentry.history"
LEGACY_BLOCKED = "/var/lib/portsentry/portsentry.blocked"
HOSTS_DENY = "/etc/hosts.deny"
SENSOR_IGNORE = "/etc/portsentry-sensor/portsentry.ignore"
COMMAND_TIMEOUT = 30


def stamp(now: float) -> str:
    """Timestamp used in backup and archive names."""
    return time.strftime("%Y%m%dT%H%M%S", time.localtime(now))


@dataclass(frozen=True)
class Result:
    """What a command returned."""

    rc: int
    out: str
    err: str


class System(Protocol):
    """Everything migrate-bans touches; files are host paths resolved under a root."""

    def run(self, argv: Sequence[str]) -> Result:
        """Run a command (rc 127 if it is not installed)."""

    def read(self, path: str) -> str | None:
        """A file's text, or None if it does not exist."""

    def write(self, path: str, text: str, backup_suffix: str) -> str:
        """Replace a file atomically, keeping its mode; returns the backup's path."""

    def rename(self, path: str, new_path: str) -> None:
        """Rename a file."""

    def local_networks(self) -> tuple[Network, ...]:
        """This host's own addresses."""

    def pids(self, program: str) -> list[int]:
        """Processes running ``program``."""

    def now(self) -> float:
        """Current time."""


class HostSystem:
    """The real system, with files under ``root``."""

    def __init__(self, root: str = "/") -> None:
        self.root = root

    def path(self, path: str) -> str:
        """Host path -> path under the root."""
        return os.path.join(self.root, path.lstrip("/"))

    def run(self, argv: Sequence[str]) -> Result:
        """Run with a timeout; a missing program is rc 127."""
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                  check=False)
        except FileNotFoundError:
            return Result(127, "", f"{argv[0]}: not installed")
        except subprocess.TimeoutExpired:
            return Result(124, "", f"{argv[0]}: timed out after {COMMAND_TIMEOUT} s")
        return Result(done.returncode, done.stdout, done.stderr)

    def read(self, path: str) -> str | None:
        """Read text (undecodable bytes replaced); None if missing."""
        try:
            with open(self.path(path), encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def write(self, path: str, text: str, backup_suffix: str) -> str:
        """Back up, then replace atomically with the same mode."""
        return install_file(self.path(path), text, backup_suffix)

    def rename(self, path: str, new_path: str) -> None:
        """Rename under the root."""
        os.rename(self.path(path), self.path(new_path))

    def local_networks(self) -> tuple[Network, ...]:
        """Addresses of this network namespace."""
        return local_networks()

    def pids(self, program: str) -> list[int]:
        """PIDs whose command name (/proc/PID/comm) is ``program``."""
        found: list[int] = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/comm", encoding="utf-8", errors="replace") as handle:
                    if handle.read().strip() == program[:15]:
                        found.append(int(entry))
            except OSError:
                continue
        return found

    def now(self) -> float:
        """Wall-clock time."""
        return time.time()


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
    """Write ``text`` to a new temporary file next to ``path`` (same mode); returns its name.

    Refuses (OSError) if ``path`` is a link, a directory or anything but a regular file.
    """
    mode = _existing_mode(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=".migrate-", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            os.fchmod(out.fileno(), default_mode if mode is None else mode)
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


def install_file(path: str, text: str, backup_suffix: str, default_mode: int = 0o644) -> str:
    """Write ``path`` atomically; an existing file is copied to ``path+suffix`` first."""
    temp = stage_file(path, text, default_mode)
    try:
        backup = backup_file(path, backup_suffix)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    return backup


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
    return [(path, backups[path]) for path, _ in files]


# ---------------------------------------------------------------- migrate-bans

@dataclass(frozen=True)
class Step:
    """One change of the plan."""

    kind: str
    text: str
    argv: tuple[str, ...] = ()


@dataclass
class Leftovers:
    """What PortSentry left behind, and what to do about it."""

    records: dict[str, int] = field(default_factory=dict)  # address -> last block time
    blocked_files: list[str] = field(default_factory=list)
    blocked: set[str] = field(default_factory=set)
    deny: list[legacy.DenyLine] = field(default_factory=list)
    removals: list[Step] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Options:
    """migrate-bans settings."""

    recent_days: float = 7.0
    jail: str = "portsentry"
    fail2ban_client: tuple[str, ...] = ("fail2ban-client",)
    legacy_conf: str = DEFAULT_FROM + "/portsentry.conf"


def _legacy_settings(system: System, path: str, notes: list[str]) -> dict[str, str]:
    """HISTORY_FILE, BLOCKED_FILE, KILL_HOSTS_DENY as PortSentry read them (lenient)."""
    text = system.read(path)
    if text is None:
        return {}
    try:
        lines = scan(text, path)
    except ConfigError as exc:
        notes.append(f"{exc} (using PortSentry's default paths)")
        return {}
    first: dict[str, str | None] = {}
    for line in lines:  # PortSentry read the first line of a key, and skipped it without quotes
        if line.key:
            first.setdefault(line.key, line.value)
    return {key: value for key, value in first.items() if value is not None}


def _read_records(system: System, leftovers: Leftovers, settings: dict[str, str]) -> None:
    history = settings.get("HISTORY_FILE", LEGACY_HISTORY)
    blocked = settings.get("BLOCKED_FILE", LEGACY_BLOCKED)
    sources = [(history, False)] + [(f"{blocked}.{mode}", True) for mode in legacy.RECORD_MODES]
    for path, is_blocked in sources:
        text = system.read(path)
        if text is None:
            continue
        if is_blocked:
            leftovers.blocked_files.append(path)
        records, warnings = legacy.parse_records(text, path)
        leftovers.notes += warnings
        for record in records:
            leftovers.records[record.address] = max(record.when, leftovers.records.get(record.address, 0))
            if is_blocked:
                leftovers.blocked.add(record.address)


def _command(system: System, argv: list[str], leftovers: Leftovers) -> str | None:
    """Output of a listing command, or None (noted) if it failed."""
    result = system.run(argv)
    if result.rc == 127:
        return None
    if result.rc != 0:
        leftovers.notes.append(f"`{' '.join(argv)}` failed: {result.err.strip()[:200]}")
        return None
    return result.out


def _add(leftovers: Leftovers, kind: str, text: str, argv: list[str], address: str) -> None:
    leftovers.removals.append(Step(kind, text, tuple(argv)))
    leftovers.active.add(address)


def _find_routes(system: System, leftovers: Leftovers, recorded: set[str], kill_route: str) -> None:
    gateway = legacy.dead_gateway(kill_route)
    for family in (4, 6):
        out = _command(system, ["ip", f"-{family}", "-j", "route", "show", "table", "all"], leftovers)
        for route in legacy.parse_routes(out or "", family, recorded, gateway):
            _add(leftovers, "route", route.describe(), route.delete_argv(), route.address)


def _find_firewall(system: System, leftovers: Leftovers, recorded: set[str], kill_run_cmd: str) -> None:
    managed: list[tuple[str, str]] = []
    chains = legacy.kill_chains(kill_run_cmd)
    for family, tool in ((4, "iptables-save"), (6, "ip6tables-save")):
        out = _command(system, [tool], leftovers)
        dump = legacy.parse_iptables_save(out or "", family, recorded, chains)
        if dump.nft_backend:
            managed += [("ip" if family == 4 else "ip6", table) for table in dump.tables]
        for rule in dump.rules:
            _add(leftovers, "iptables", rule.describe(), rule.delete_argv(), rule.address)
    out = _command(system, ["nft", "-j", "list", "ruleset"], leftovers)
    for nft_rule in legacy.parse_nft_ruleset(out or "", recorded, managed):
        _add(leftovers, "nft", nft_rule.describe(), nft_rule.delete_argv(), nft_rule.address)


def collect(system: System, options: Options) -> Leftovers:
    """Read every trace PortSentry left; no changes."""
    leftovers = Leftovers()
    settings = _legacy_settings(system, options.legacy_conf, leftovers.notes)
    _read_records(system, leftovers, settings)
    recorded = set(leftovers.records)
    if not recorded:
        return leftovers
    _find_firewall(system, leftovers, recorded, settings.get("KILL_RUN_CMD", ""))
    _find_routes(system, leftovers, recorded, settings.get("KILL_ROUTE", ""))
    deny_text = system.read(HOSTS_DENY)
    templates = (*legacy.DEFAULT_HOSTS_DENY, settings.get("KILL_HOSTS_DENY", ""))
    leftovers.deny = legacy.parse_hosts_deny(deny_text or "", recorded, templates)
    leftovers.active |= {line.address for line in leftovers.deny}
    return leftovers


def _ignore_list(system: System) -> IgnoreList:
    """Addresses never handed to fail2ban: old and new ignore files, this host."""
    configured: list[Network] = []
    for path in (DEFAULT_FROM + "/portsentry.ignore.static", DEFAULT_FROM + "/portsentry.ignore",
                 SENSOR_IGNORE):
        for line in (system.read(path) or "").splitlines():
            item = line.split("#", 1)[0].strip()
            try:
                network = ipaddress.ip_network(item, strict=False)
            except ValueError:
                continue
            if not (network.network_address.is_unspecified and "/" not in item):
                configured.append(network)
    return IgnoreList.build(configured, system.local_networks())


def handover(system: System, leftovers: Leftovers, options: Options) -> tuple[list[str], list[str]]:
    """(addresses to ban in fail2ban, notes on those that are not)."""
    ignore = _ignore_list(system)
    cutoff = system.now() - options.recent_days * 86400
    chosen: list[str] = []
    notes: list[str] = []
    for address in sorted(leftovers.active | leftovers.blocked, key=_sort_key):
        when = leftovers.records.get(address, 0)
        day = time.strftime("%Y-%m-%d", time.localtime(when))
        if address in ignore:
            notes.append(f"{address}: in the ignore list or this host's own: unblocked, not banned")
        elif when < cutoff:
            notes.append(f"{address}: last blocked {day}, older than {options.recent_days:g} days: "
                         "unblocked, not banned")
        else:
            chosen.append(address)
    return chosen, notes


def _sort_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


def plan_steps(leftovers: Leftovers, chosen: list[str], options: Options) -> list[Step]:
    """Every change, in the order it is applied: ban first, then unblock."""
    steps: list[Step] = []
    if chosen:
        steps.append(Step("fail2ban", f"ban in fail2ban jail '{options.jail}' (expires): "
                          + " ".join(chosen),
                          (*options.fail2ban_client, "set", options.jail, "banip", *chosen)))
    steps += leftovers.removals
    steps += [Step("hosts.deny", f"{HOSTS_DENY}:{line.number}: remove {line.text.strip()!r}")
              for line in leftovers.deny]
    steps += [Step("records", f"{path}: archive (PortSentry's list of current blocks)")
              for path in leftovers.blocked_files]
    return steps


def _log(prefix: str, text: str) -> None:
    print(f"{prefix} {text}", flush=True)


def _apply_ban(system: System, step: Step, options: Options) -> bool:
    status = system.run([*options.fail2ban_client, "status", options.jail])
    if status.rc != 0:
        print(f"migrate-bans: fail2ban jail '{options.jail}' is not reachable "
              f"({status.err.strip()[:200] or status.out.strip()[:200]}); nothing changed",
              file=sys.stderr)
        return False
    result = system.run(step.argv)
    if result.rc != 0:
        print(f"migrate-bans: {step.text}: failed: {result.err.strip()[:200]}; nothing changed",
              file=sys.stderr)
        return False
    _log("done:", step.text)
    return True


def _apply_hosts_deny(system: System, when: str, recorded: set[str], settings: dict[str, str]) -> None:
    text = system.read(HOSTS_DENY) or ""
    templates = (*legacy.DEFAULT_HOSTS_DENY, settings.get("KILL_HOSTS_DENY", ""))
    lines = legacy.parse_hosts_deny(text, recorded, templates)
    if not lines:
        return
    backup = system.write(HOSTS_DENY, legacy.without_lines(text, [line.number for line in lines]),
                          f".bak-{when}")
    for line in lines:
        _log("done:", f"{HOSTS_DENY}: removed {line.text.strip()!r}")
    _log("done:", f"{HOSTS_DENY}: backup in {backup}")


def apply(system: System, leftovers: Leftovers, steps: list[Step], options: Options) -> int:
    """Run the plan; a ban that fails stops everything before any block is lifted."""
    when = stamp(system.now())
    failures = 0
    for step in steps:
        if step.kind == "fail2ban":
            if not _apply_ban(system, step, options):
                return 1
        elif step.argv:
            result = system.run(step.argv)
            if result.rc == 0:
                _log("done:", f"removed {step.text}")
            else:
                failures += 1
                _log("failed:", f"{step.text}: {result.err.strip()[:200]}")
    try:
        if leftovers.deny:
            settings = _legacy_settings(system, options.legacy_conf, [])
            _apply_hosts_deny(system, when, set(leftovers.records), settings)
        for path in leftovers.blocked_files:
            system.rename(path, f"{path}.migrated-{when}")
            _log("done:", f"{path}: archived as {path}.migrated-{when}")
    except OSError as exc:
        _log("failed:", f"{exc.filename or ''}: {exc.strerror or exc}")
        failures += 1
    return 1 if failures else 0


def migrate_bans(system: System, options: Options, do_apply: bool) -> int:
    """Print the plan; with ``do_apply``, carry it out."""
    leftovers = collect(system, options)
    for note in leftovers.notes:
        _log("note:", note)
    chosen, notes = handover(system, leftovers, options)
    steps = plan_steps(leftovers, chosen, options)
    if not steps:
        _log("migrate-bans:", "nothing to do: no PortSentry blocks left")
        return 0
    for note in notes:
        _log("note:", note)
    running = system.pids("portsentry")
    if running:
        print(f"migrate-bans: PortSentry is still running (pid {' '.join(map(str, running))}) and would "
              "block again: stop it first (systemctl disable --now portsentry)", file=sys.stderr)
        if do_apply:
            return 1
    if not do_apply:
        for step in steps:
            _log("plan:", step.text)
        _log("migrate-bans:", f"{len(steps)} changes planned; run again with --apply to make them")
        return 0
    return apply(system, leftovers, steps, options)


def _cmd_migrate_bans(args: argparse.Namespace) -> int:
    client: list[str] = [args.fail2ban_client]
    if args.fail2ban_socket:
        client += ["-s", args.fail2ban_socket]
    options = Options(recent_days=args.recent_days, jail=args.jail, fail2ban_client=tuple(client))
    return migrate_bans(HostSystem(args.root), options, args.apply)


# --------------------------------------------------------------- import-config

def _read_optional(path: str) -> str | None:
    return read_file(path) if os.path.exists(path) else None


def _write_imported(to: str, ignore_target: str, config_text: str, ignore_text: str) -> int:
    """Install both files or neither (backups kept), checked first as the daemon would load them."""
    suffix = f".bak-{stamp(time.time())}"

    def check(staged: dict[str, str]) -> None:
        try:
            load_config(staged[to], defaults=())
        except ConfigError as exc:
            raise ConfigError(to, exc.line, exc.key, exc.what) from None
    try:
        written = install_files(((ignore_target, ignore_text), (to, config_text)), suffix, check)
    except ConfigError as exc:
        print(f"import-config: {exc}; nothing written", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"import-config: {exc.filename or to}: {exc.strerror or exc}; nothing written",
              file=sys.stderr)
        return 2
    for path, backup in written:
        print(f"wrote {path}" + (f" (previous version kept as {backup})" if backup else ""))
    return 0


def _cmd_import_config(args: argparse.Namespace) -> int:
    source = args.source.rstrip("/") or "/"
    static_path = os.path.join(source, "portsentry.ignore.static")
    ignore_path = os.path.join(source, "portsentry.ignore")
    ignore_target = os.path.join(os.path.dirname(os.path.abspath(args.to)), "portsentry.ignore")
    conf_path = os.path.join(source, "portsentry.conf")
    try:
        imported = import_config(read_file(conf_path), conf_path, _read_optional(args.defaults),
                                 args.defaults, _read_optional(static_path), static_path,
                                 _read_optional(ignore_path), ignore_path, ignore_target)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"# ==> {args.to} <==")
    print(imported.config_text)
    print(f"# ==> {ignore_target} <==")
    print(imported.ignore_text)
    print("# ==> import report <==")
    for finding in imported.report:
        print(str(finding))
    if not args.write:
        print("# Nothing written; run again with --write to install these files.")
        return 0
    return _write_imported(os.path.abspath(args.to), ignore_target, imported.config_text,
                           imported.ignore_text)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``import-config`` and ``migrate-bans``."""
    imp = sub.add_parser("import-config", help="translate /etc/portsentry into a portsentry-sensor config",
                         description="Print the portsentry-sensor configuration equivalent to an "
                         "existing PortSentry one, with a report of every key mapped, changed or dropped.")
    imp.add_argument("--from", dest="source", default=DEFAULT_FROM, metavar="DIR",
                     help=f"PortSentry's configuration directory (default {DEFAULT_FROM})")
    imp.add_argument("--defaults", default=DEFAULT_DEFAULTS, metavar="FILE",
                     help=f"PortSentry's mode file (default {DEFAULT_DEFAULTS})")
    imp.add_argument("--to", default=DEFAULT_TO, metavar="FILE",
                     help=f"where --write installs the config (default {DEFAULT_TO}); "
                     "the ignore list goes next to it")
    imp.add_argument("--write", action="store_true", help="install the files (old ones kept as .bak-TIME)")
    imp.set_defaults(func=_cmd_import_config)
    mig = sub.add_parser("migrate-bans", help="hand PortSentry's permanent blocks over to fail2ban",
                         description="Find the routes, firewall rules and hosts.deny lines PortSentry "
                         "left for the addresses it recorded; print the plan, or with --apply ban the "
                         "recent ones in fail2ban and remove the old blocks.")
    mig.add_argument("--apply", action="store_true", help="make the changes (default: only print the plan)")
    mig.add_argument("--root", default="/", help="look for files under this directory (default /)")
    mig.add_argument("--recent-days", type=float, default=7.0, metavar="N",
                     help="hand addresses blocked in the last N days to fail2ban (default 7)")
    mig.add_argument("--jail", default="portsentry", help="fail2ban jail (default portsentry)")
    mig.add_argument("--fail2ban-client", default="fail2ban-client", metavar="PROGRAM",
                     help="fail2ban-client program (default fail2ban-client)")
    mig.add_argument("--fail2ban-socket", default="", metavar="PATH",
                     help="fail2ban server socket (default: fail2ban-client's own)")
    mig.set_defaults(func=_cmd_migrate_bans)


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python3 -m sensor.migrate COMMAND``."""
    parser = argparse.ArgumentParser(prog="portsentry-sensor")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
