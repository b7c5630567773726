"""Command line: ``portsentry-sensor run|check|...``.

Errors are one line on stderr and a non-zero exit (2 for bad input, as
argparse does); never a traceback for something the user typed or wrote.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from sensor import __version__
from sensor.config import DEFAULT_CONFIG, ConfigError
from sensor.ignore import IgnoreFileError

EPILOG = """\
The sensor only logs: each detected scan becomes one "attackalert:" event in
the journal (and syslog), and fail2ban's jail "portsentry" does the banning:
  fail2ban-client status portsentry
  fail2ban-client set portsentry unbanip ADDRESS
See portsentry-sensor(8) and portsentry-sensor.conf(5)."""


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", default=DEFAULT_CONFIG,
                        help=f"configuration file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--defaults", metavar="FILE", action="append",
                        help="where TCP_MODE/UDP_MODE are read when the configuration lacks them "
                             "(default: /etc/default/portsentry-sensor, then /etc/default/portsentry)")


def _cmd_run(args: argparse.Namespace) -> int:
    from sensor.daemon import run
    return run(args.config, args.defaults, stderr=args.stderr)


def _cmd_check(args: argparse.Namespace) -> int:
    from sensor.check import check
    return check(args.config, args.defaults, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = argparse.ArgumentParser(
        prog="portsentry-sensor",
        description="Detect port scans (TCP/UDP, IPv4/IPv6) and log them for fail2ban; never blocks.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run the sensor in the foreground (as systemd starts it)",
                         description="Run the sensor in the foreground until SIGTERM; SIGHUP reloads.")
    _config_args(run)
    run.add_argument("--stderr", action="store_true",
                     help="write events to standard error instead of the journal")
    run.set_defaults(func=_cmd_run)
    chk = sub.add_parser("check", help="validate the configuration and print the port plan",
                         description="Validate the configuration and ignore file; print what would be "
                                     "watched. Exit 0 if valid, 2 if not.")
    _config_args(chk)
    chk.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    chk.set_defaults(func=_cmd_check)
    for module in _extensions():
        module.add_commands(sub)
    return parser


def _extensions() -> list[Any]:
    """Subcommands that live in their own modules (a module that does not import is an error)."""
    import importlib
    return [importlib.import_module(name)
            for name in ("sensor.jailconfig", "sensor.migrate", "sensor.report", "sensor.status")]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = args.func(args)
    except (ConfigError, IgnoreFileError) as exc:
        print(f"portsentry-sensor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
