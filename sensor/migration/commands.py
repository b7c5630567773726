"""Coming from PortSentry: the ``import-config`` and ``migrate-bans`` commands.

``import-config`` turns /etc/portsentry (plus /etc/default/portsentry) into a
portsentry-sensor configuration and reports every key it mapped, changed or
dropped (:mod:`sensor.migration.translate` does the translation).
``migrate-bans`` finds the never-expiring blocks PortSentry left behind
(:mod:`sensor.migration.banplan`), prints the plan, and with ``--apply``
(:mod:`sensor.migration.banapply`) hands each recent address to fail2ban
(``set portsentry banip``) *before* removing the old block, so nobody slips
through and every ban now expires.  All system access goes through
:class:`sensor.migration.hostsystem.System` so tests can use sample trees and a
fake runner.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from sensor.atomicfile import install_files
from sensor.config import ConfigError, load_config, read_file
from sensor.migration import hostsystem
from sensor.migration.banapply import apply, log
from sensor.migration.banplan import DEFAULT_FROM, Options, collect, handover, plan_steps
from sensor.migration.hostsystem import HostSystem, System
from sensor.migration.translate import import_config

DEFAULT_DEFAULTS = "/etc/default/portsentry"
DEFAULT_TO = "/etc/portsentry-sensor/portsentry.conf"


# ---------------------------------------------------------------- migrate-bans

def migrate_bans(system: System, options: Options, do_apply: bool) -> int:
    """Print the plan; with ``do_apply``, carry it out."""
    leftovers = collect(system, options)
    for note in leftovers.notes:
        log("note:", note)
    chosen, notes = handover(system, leftovers, options)
    steps = plan_steps(leftovers, chosen, options)
    if not steps:
        log("migrate-bans:", "nothing to do: no PortSentry blocks left")
        return 0
    for note in notes:
        log("note:", note)
    running = system.pids("portsentry")
    if running:
        print(f"migrate-bans: PortSentry is still running (pid {' '.join(map(str, running))}) and would "
              "block again: stop it first (systemctl disable --now portsentry)", file=sys.stderr)
        if do_apply:
            return 1
    if not do_apply:
        for step in steps:
            log("plan:", step.text)
        log("migrate-bans:", f"{len(steps)} changes planned; run again with --apply to make them")
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
    suffix = f".bak-{hostsystem.stamp(time.time())}"

    def check(staged: dict[str, str]) -> None:
        try:
            load_config(staged[to], defaults=())
        except ConfigError as exc:
            raise ConfigError(to, exc.line, exc.key, exc.what) from None
    try:
        os.makedirs(os.path.dirname(to), exist_ok=True)
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
    """Stand-alone entry point: ``python3 -m sensor.migration.commands COMMAND``."""
    parser = argparse.ArgumentParser(prog="portsentry-sensor")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
