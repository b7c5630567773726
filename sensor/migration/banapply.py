"""``migrate-bans --apply``: carry out the plan of :mod:`sensor.migration.banplan`.

The ban in fail2ban comes first; if it fails, nothing is unblocked.  Then the
old routes and rules are deleted, PortSentry's hosts.deny lines removed (the old
file kept as a backup) and its lists of current blocks archived.
"""

from __future__ import annotations

import sys

from sensor.migration import hostsystem
from sensor.migration.banplan import HOSTS_DENY, Leftovers, Options, Step, legacy_settings
from sensor.migration.hostsystem import System
from sensor.migration.leftovers import DEFAULT_HOSTS_DENY, parse_hosts_deny, without_lines


def log(prefix: str, text: str) -> None:
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
    log("done:", step.text)
    return True


def _apply_hosts_deny(system: System, when: str, recorded: set[str], settings: dict[str, str]) -> None:
    text = system.read(HOSTS_DENY) or ""
    templates = (*DEFAULT_HOSTS_DENY, settings.get("KILL_HOSTS_DENY", ""))
    lines = parse_hosts_deny(text, recorded, templates)
    if not lines:
        return
    backup = system.write(HOSTS_DENY, without_lines(text, [line.number for line in lines]),
                          f".bak-{when}")
    for line in lines:
        log("done:", f"{HOSTS_DENY}: removed {line.text.strip()!r}")
    log("done:", f"{HOSTS_DENY}: backup in {backup}")


def apply(system: System, leftovers: Leftovers, steps: list[Step], options: Options) -> int:
    """Run the plan; a ban that fails stops everything before any block is lifted."""
    when = hostsystem.stamp(system.now())
    failures = 0
    for step in steps:
        if step.kind == "fail2ban":
            if not _apply_ban(system, step, options):
                return 1
        elif step.argv:
            result = system.run(step.argv)
            if result.rc == 0:
                log("done:", f"removed {step.text}")
            else:
                failures += 1
                log("failed:", f"{step.text}: {result.err.strip()[:200]}")
    try:
        if leftovers.deny:
            settings = legacy_settings(system, options.legacy_conf, [])
            _apply_hosts_deny(system, when, set(leftovers.records), settings)
        for path in leftovers.blocked_files:
            system.rename(path, f"{path}.migrated-{when}")
            log("done:", f"{path}: archived as {path}.migrated-{when}")
    except OSError as exc:
        log("failed:", f"{exc.filename or ''}: {exc.strerror or exc}")
        failures += 1
    return 1 if failures else 0
