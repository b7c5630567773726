"""``portsentry-sensor fail2ban-config``: render jail.d/portsentry.local.

One source of truth for exceptions: the sensor's ignore list becomes the jail's
``ignoreip``, so an address the sensor never reports is never banned either.  The
admin's choices (ban times, escalation, backend, mode) are flags; the result is
shown as a unified diff against the existing file and written only with
``--write``.  Every value is validated before it reaches the template, because
the rendered text is fail2ban configuration (a newline in a value would add
settings).  See fail2ban/jail.d/portsentry.conf for what each setting does.
"""

from __future__ import annotations

import argparse
import difflib
import os
import pwd
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from sensor.atomicfile import write_atomic
from sensor.config import DEFAULT_CONFIG, load_config
from sensor.ignore import LOOPBACK, Network, read_ignore_file
from sensor.journalmatch import JournalMatchError, check_journalmatch

DEFAULT_OUTPUT = "/etc/fail2ban/jail.d/portsentry.local"
DEFAULT_LOGPATH = "/var/log/syslog"
SENSOR_USER = "portsentry-sensor"
TEMPLATE = "portsentry.local.j2"
RUN_SYSTEMD = "/run/systemd/system"
BACKENDS = ("systemd", "file")
MODES = ("all", "verified")
# fail2ban's dbpurgeage default (Debian 12): older bans are forgotten.
DB_PURGE_AGE = 86400

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"^(?:\d+[smhdw]?)+$")
_DURATION_PART = re.compile(r"(\d+)([smhdw]?)")
_PATH = re.compile(r"^/[^\s]*$")


class JailConfigError(ValueError):
    """A bad flag value: one line, exit 2."""


@dataclass(frozen=True)
class JailChoices:
    """What goes into the .local; validated by :func:`validate`."""

    bantime: str = "10m"
    findtime: str = "10m"
    maxretry: int = 1
    escalate_after: int = 4
    escalate_window: str = "1d"
    backend: str = "systemd"
    mode: str = "all"
    journalmatch: str = ""
    logpath: str = DEFAULT_LOGPATH
    ignoreip: tuple[str, ...] = field(default=())
    ignore_file: str = ""
    config_path: str = ""


def duration_seconds(value: str, what: str) -> int:
    """A fail2ban duration (``600``, ``10m``, ``1h30m``, ``1w``) in seconds, > 0."""
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise JailConfigError(f"--{what}: '{value}' is not a duration like 600, 10m, 1h, 1d, 1w")
    seconds = sum(int(n) * _UNITS[u or "s"] for n, u in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise JailConfigError(f"--{what}: '{value}' must be longer than 0 s")
    return seconds


def validate(choices: JailChoices) -> list[str]:
    """Raise JailConfigError on a bad value; return warnings (one line each)."""
    for name in ("bantime", "findtime", "escalate_window"):
        duration_seconds(getattr(choices, name), name.replace("_", "-"))
    if choices.maxretry < 1:
        raise JailConfigError(f"--maxretry: {choices.maxretry} must be 1 or more")
    if choices.escalate_after < 1:
        raise JailConfigError(f"--escalate-after: {choices.escalate_after} must be 1 or more")
    if choices.backend not in BACKENDS:
        raise JailConfigError(f"--backend: '{choices.backend}' is not one of {', '.join(BACKENDS)}")
    if choices.mode not in MODES:
        raise JailConfigError(f"--mode: '{choices.mode}' is not one of {', '.join(MODES)}")
    if choices.journalmatch:
        _check_journalmatch(choices.journalmatch)
    if not _PATH.fullmatch(choices.logpath):
        raise JailConfigError(f"--logpath: '{choices.logpath}' is not an absolute path without spaces")
    warnings = []
    if duration_seconds(choices.escalate_window, "escalate-window") > DB_PURGE_AGE:
        warnings.append("escalate-window is longer than fail2ban's dbpurgeage (1d by default): "
                        "raise dbpurgeage in /etc/fail2ban/fail2ban.local or older bans are not counted")
    if choices.backend == "file":
        warnings.append("backend file: any local user can write an alert-like syslog line and get "
                        "an address banned; backend systemd with a journalmatch is safer")
    return warnings


def _check_journalmatch(match: str) -> None:
    """The trust rule (:func:`sensor.journalmatch.check_journalmatch`) as a JailConfigError."""
    try:
        check_journalmatch(match)
    except JournalMatchError as exc:
        raise JailConfigError(str(exc)) from None


def ignoreip(configured: tuple[Network, ...]) -> tuple[str, ...]:
    """Loopback first, then the ignore list, without entries an earlier one covers."""
    kept: list[Network] = []
    for network in (*LOOPBACK, *configured):
        if not any(network.version == k.version and network.subnet_of(k) for k in kept):  # type: ignore[arg-type]
            kept.append(network)
    return tuple(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in kept)


def render(choices: JailChoices, template_dir: Path | None = None) -> str:
    """The .local text for these (validated) choices."""
    directory = template_dir or Path(__file__).resolve().parent / "templates"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    text = env.get_template(TEMPLATE).render(**choices.__dict__)
    return re.sub(r"\n{3,}", "\n\n", text)


def default_journalmatch(run_systemd: str = RUN_SYSTEMD, user: str = SENSOR_USER) -> str:
    """Empty (the shipped unit match) under systemd; else the sensor user's _UID."""
    if os.path.isdir(run_systemd):
        return ""
    try:
        return f"_UID={pwd.getpwnam(user).pw_uid}"
    except KeyError:
        return ""


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff from the existing file to the rendered one ('' if equal)."""
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        fromfile=f"{path} (current)", tofile=f"{path} (new)"))


def _read_existing(path: str) -> str:
    """The current file ('' if there is none); JailConfigError if it cannot be compared."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise JailConfigError(f"--output: {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise JailConfigError(f"--output: {path} is a directory; name the file to write "
                              f"(default: {DEFAULT_OUTPUT})")
    if not stat.S_ISREG(mode):
        raise JailConfigError(f"--output: {path} is not a regular file")
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError as exc:
        raise JailConfigError(f"--output: {path} is not UTF-8 text (byte {exc.start}); "
                              "fix or move it, nothing was written") from None
    except OSError as exc:
        raise JailConfigError(f"--output: {path}: {exc.strerror or exc}") from None


def choices_from_args(args: argparse.Namespace) -> JailChoices:
    """Flags plus the sensor's configuration (its IGNORE_FILE) -> JailChoices."""
    config = load_config(args.config, args.defaults)
    journalmatch = default_journalmatch() if args.journalmatch == "auto" else args.journalmatch
    if journalmatch == "unit":
        journalmatch = ""
    return JailChoices(
        bantime=args.bantime, findtime=args.findtime, maxretry=args.maxretry,
        escalate_after=args.escalate_after, escalate_window=args.escalate_window,
        backend=args.backend, mode=args.mode, journalmatch=journalmatch, logpath=args.logpath,
        ignoreip=ignoreip(read_ignore_file(config.ignore_file)),
        ignore_file=config.ignore_file.replace("\n", " "), config_path=args.config.replace("\n", " "))


def handle(args: argparse.Namespace) -> int:
    """Render, show the diff, write with --write."""
    try:
        choices = choices_from_args(args)
        warnings = validate(choices)
        existing = _read_existing(args.output)
    except JailConfigError as exc:
        print(f"portsentry-sensor: fail2ban-config: {exc}", file=sys.stderr)
        return 2
    if choices.backend == "systemd" and not choices.journalmatch and not os.path.isdir(RUN_SYSTEMD):
        warnings.append(f"systemd is not running: the shipped journalmatch (_SYSTEMD_UNIT=) will match "
                        f"nothing; pass --journalmatch _UID=<uid of {SENSOR_USER}>")
    for warning in warnings:
        print(f"portsentry-sensor: warning: {warning}", file=sys.stderr)
    text = render(choices)
    diff = unified_diff(existing, text, args.output)
    if not diff:
        print(f"{args.output} is up to date")
        return 0
    sys.stdout.write(diff)
    if not args.write:
        print(f"# not written: run again with --write to update {args.output}")
        return 0
    try:
        write_atomic(args.output, text)
    except OSError as exc:
        print(f"portsentry-sensor: fail2ban-config: {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"# written {args.output}; apply with: fail2ban-client reload portsentry")
    return 0


def _positive_int(value: str) -> int:
    if not re.fullmatch(r"\d+", value.strip()):
        raise argparse.ArgumentTypeError(f"'{value}' is not a whole number")
    return int(value)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``fail2ban-config``."""
    cmd = sub.add_parser(
        "fail2ban-config", help="render fail2ban's jail.d/portsentry.local (ignore list, ban times)",
        description="Render /etc/fail2ban/jail.d/portsentry.local from the sensor's ignore list and "
                    "the choices below, show the diff against the current file, and write it only "
                    "with --write.")
    cmd.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG,
                     help=f"sensor configuration, for IGNORE_FILE (default: {DEFAULT_CONFIG})")
    cmd.add_argument("--defaults", metavar="FILE", action="append", help=argparse.SUPPRESS)
    cmd.add_argument("--bantime", default="10m", help="first ban (default: 10m)")
    cmd.add_argument("--findtime", default="10m", help="window for maxretry (default: 10m)")
    cmd.add_argument("--maxretry", type=_positive_int, default=1,
                     help="alerts within findtime before a ban (default: 1)")
    cmd.add_argument("--escalate-after", type=_positive_int, default=4, metavar="N",
                     help="the Nth ban within the escalation window is permanent (default: 4)")
    cmd.add_argument("--escalate-window", default="1d", help="escalation window (default: 1d)")
    cmd.add_argument("--backend", default="systemd", choices=BACKENDS,
                     help="systemd (journal, default) or file (syslog file; less safe)")
    cmd.add_argument("--mode", default="all", choices=MODES,
                     help="all alerts, or verified ones only (completed TCP handshakes)")
    cmd.add_argument("--journalmatch", default="auto", metavar="auto|unit|_FIELD=value",
                     help="auto (default): the unit under systemd, else _UID of the sensor user; "
                          "or one of _SYSTEMD_UNIT=unit, _UID=uid, _PID=pid (no other field: "
                          "a local user could forge it)")
    cmd.add_argument("--logpath", default=DEFAULT_LOGPATH,
                     help=f"syslog file for --backend file (default: {DEFAULT_LOGPATH})")
    cmd.add_argument("-o", "--output", default=DEFAULT_OUTPUT,
                     help=f"file to compare and write (default: {DEFAULT_OUTPUT})")
    cmd.add_argument("--write", action="store_true", help="write the file (default: only show the diff)")
    cmd.set_defaults(func=handle)
