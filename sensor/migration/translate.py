"""Translate a PortSentry 1.2 configuration into a portsentry-sensor one.

Reads the files the way PortSentry did (``ConfigTokenRetrieve()`` in
portsentry_io.c): ``KEY="value"`` lines, the *first* occurrence of a key wins,
a value without quotes is skipped, and the TCP/UDP modes come from
/etc/default/portsentry (the init script passes them on the command line;
``TCP_MODE`` inside portsentry.conf is never read).  Every key is reported as
mapped, changed or dropped with the reason; comments and unknown keys are
reported too.  The result is validated with :func:`sensor.config.build_config`
and errors name the *old* file and line.  Pure: text in, text out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sensor.config import BLOCKING_KEYS, MODE_KEYS, Config, ConfigError, Setting, build_config, parse_text
from sensor.ignore import IgnoreEntry, IgnoreFileError, ignore_entries

# Keys whose meaning is the same in portsentry-sensor (value copied as-is).
SAME_KEYS = {
    "TCP_PORTS": "same meaning (used by tcp/stcp modes)",
    "UDP_PORTS": "same meaning (used by udp/sudp modes)",
    "ADVANCED_PORTS_TCP": "same meaning (atcp watches every free port below it)",
    "ADVANCED_PORTS_UDP": "same meaning (audp watches every free port below it)",
    "ADVANCED_EXCLUDE_TCP": "same meaning",
    "ADVANCED_EXCLUDE_UDP": "same meaning",
    "SCAN_TRIGGER": "same meaning: ports a source may touch before the alert "
                    "(counted within SCAN_WINDOW, 300 s by default)",
    "RESOLVE_HOST": "kept; a resolved name is only ever added as the last field of an alert",
    "PORT_BANNER": "kept; sent only on accepted connections in bound tcp mode",
    "LOG_TARGET": "portsentry-sensor key, kept",
    "SCAN_WINDOW": "portsentry-sensor key, kept",
    "SUMMARY_INTERVAL": "portsentry-sensor key, kept",
    "SUMMARY_MAX_LINES": "portsentry-sensor key, kept",
    "STATE_MAX_SOURCES": "portsentry-sensor key, kept",
    "FLOOD_SOURCES": "portsentry-sensor key, kept",
    "FLOOD_PORTS": "portsentry-sensor key, kept",
    "PLAN_REFRESH": "portsentry-sensor key, kept",
}
STATE_KEYS = ("HISTORY_FILE", "BLOCKED_FILE")
BAN_REASON = "fail2ban bans now (jail 'portsentry', time-limited, increasing)"
_LINE = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*(.*?)\s*$')
_FIREWALL_WORDS = ("iptables", "ip6tables", "nft", "route", "ipset", "ipchains", "ipfw", "hosts.deny")


@dataclass(frozen=True)
class Finding:
    """One line of the import report."""

    verdict: str  # mapped, changed, dropped, comment, unknown, note
    where: str
    key: str
    why: str

    def __str__(self) -> str:
        key = f"{self.key}: " if self.key else ""
        return f"{self.verdict:<8} {self.where}: {key}{self.why}"


@dataclass(frozen=True)
class SourceLine:
    """A classified line of a PortSentry config file."""

    number: int
    text: str
    key: str = ""
    value: str | None = None  # None: PortSentry skipped it (no quotes)


@dataclass
class _Build:
    """Accumulates the output while translating."""

    settings: dict[str, Setting] = field(default_factory=dict)
    blocks: dict[str, list[str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    report: list[Finding] = field(default_factory=list)


@dataclass(frozen=True)
class Imported:
    """The translated configuration, its ignore file and the report."""

    config_text: str
    ignore_text: str
    report: tuple[Finding, ...]
    config: Config


def classify_lines(text: str, path: str) -> list[SourceLine]:
    """Classify lines as PortSentry read them; syntax errors raise ConfigError."""
    parse_text(text, path)  # same syntax rules as our loader: FILE:LINE: KEY: errors
    lines: list[SourceLine] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line.strip())
        if match is None:
            lines.append(SourceLine(number, line))
            continue
        raw = match.group(2)
        value = raw[1:].split('"', 1)[0] if raw.startswith('"') else None
        lines.append(SourceLine(number, line, match.group(1), value))
    return lines


def _first_wins(lines: list[SourceLine], path: str, build: _Build) -> dict[str, SourceLine]:
    """PortSentry read only the first line naming a key (skipped if unquoted); the rest are reported."""
    first: dict[str, SourceLine] = {}
    chosen: dict[str, SourceLine] = {}
    for line in lines:
        if not line.key:
            continue
        if line.key in first:
            used = first[line.key]
            why = (f"PortSentry used line {used.number}" if used.value is not None else
                   f"PortSentry read only line {used.number} (and skipped the key: no quotes)")
            build.report.append(Finding("dropped", f"{path}:{line.number}", line.key, "repeated: " + why))
            build.dropped.append(line.text.strip())
            continue
        first[line.key] = line
        if line.value is None:
            build.report.append(Finding("dropped", f"{path}:{line.number}", line.key,
                                        "no quotes around the value: PortSentry skipped this key"))
            build.dropped.append(line.text.strip())
        else:
            chosen[line.key] = line
    return chosen


def _comment_blocks(lines: list[SourceLine]) -> tuple[dict[int, list[SourceLine]], list[int]]:
    """Comment blocks directly above a setting (by its line) and the loose comment lines."""
    attached: dict[int, list[SourceLine]] = {}
    loose: list[int] = []
    pending: list[SourceLine] = []
    for line in lines:
        stripped = line.text.strip()
        if stripped.startswith("#"):
            pending.append(line)
            continue
        if line.key and pending:
            attached[line.number] = pending
        else:
            loose += [p.number for p in pending]
        pending = []
    loose += [p.number for p in pending]
    return attached, loose


def _ranges(numbers: list[int]) -> str:
    """``1-12,15,20-31`` from sorted line numbers."""
    spans: list[str] = []
    start = prev = None
    for number in [*sorted(numbers), -1]:
        if prev is not None and number == prev + 1:
            prev = number
            continue
        if start is not None:
            spans.append(f"{start}-{prev}" if start != prev else str(start))
        start = prev = number
    return ",".join(spans)


def _kill_reason(key: str, value: str) -> str:
    """Why a blocking key is dropped, worded for what it did."""
    if key == "KILL_RUN_CMD" and not any(w in value for w in _FIREWALL_WORDS):
        return ("it ran a command on each attack; fail2ban bans now, and a fail2ban "
                "action in jail.d/portsentry.local can run your command (e.g. mail) instead")
    if key in ("BLOCK_TCP", "BLOCK_UDP") and value.strip() == "0":
        return (f"was 0 (log only): the sensor only logs, and {BAN_REASON}; "
                "leave the jail disabled to stay log-only")
    if key == "KILL_RUN_CMD_FIRST":
        return "no KILL_RUN_CMD any more; " + BAN_REASON
    return BAN_REASON + "; `portsentry-sensor migrate-bans` removes what it left behind"


def _take(build: _Build, line: SourceLine, path: str, value: str, why: str,
          verdict: str = "mapped") -> None:
    build.settings[line.key] = Setting(value, path, line.number)
    build.report.append(Finding(verdict, f"{path}:{line.number}", line.key, why))


def _translate_key(build: _Build, line: SourceLine, path: str, ignore_target: str) -> None:
    """Map, change or drop one chosen setting."""
    key, value, where = line.key, line.value or "", f"{path}:{line.number}"
    if key in SAME_KEYS:
        _take(build, line, path, value, SAME_KEYS[key])
    elif key == "IGNORE_FILE":
        _take(build, line, path, ignore_target,
              f"{value} -> {ignore_target} (entries copied; the host's own addresses are "
              "always ignored)", "changed")
    elif key in MODE_KEYS:
        build.report.append(Finding("dropped", where, key, "PortSentry never read the mode here "
                                    "(the init script takes it from /etc/default/portsentry)"))
        build.dropped.append(line.text.strip())
    elif key in BLOCKING_KEYS:
        build.report.append(Finding("dropped", where, key, _kill_reason(key, value)))
        build.dropped.append(line.text.strip())
    elif key in STATE_KEYS:
        build.report.append(Finding("dropped", where, key, "PortSentry's own ban records; "
                                    "`portsentry-sensor migrate-bans` reads them"))
        build.dropped.append(line.text.strip())
    else:
        build.report.append(Finding("unknown", where, key, "not a PortSentry or portsentry-sensor "
                                    "key; carried over commented out"))
        build.dropped.append(line.text.strip())


def _modes(build: _Build, defaults_text: str | None, defaults_path: str) -> None:
    """TCP_MODE/UDP_MODE as the init script passed them."""
    if defaults_text is None:
        build.report.append(Finding("note", defaults_path, "", "missing: PortSentry's init script "
                                    "would not have started; using the defaults atcp/audp"))
        return
    found, _ = parse_text(defaults_text, defaults_path, shell=True)  # sourced by sh: last wins
    for key in MODE_KEYS:
        setting = found.get(key)
        if setting is None:
            build.settings[key] = Setting("off", defaults_path, 0)
            build.report.append(Finding("changed", defaults_path, key, "not set: PortSentry's init "
                                        "script did not start this protocol -> off"))
            continue
        value = setting.value.strip() or "off"
        why = "mode kept" if setting.value.strip() else "empty (PortSentry did not start it) -> off"
        _take(build, SourceLine(setting.line, "", key), defaults_path, value, why)


def _header(conf_path: str, defaults_path: str) -> list[str]:
    return ["# portsentry-sensor configuration, imported by `portsentry-sensor import-config`",
            f"# from {conf_path} and {defaults_path}.",
            "# The sensor only logs; fail2ban's jail 'portsentry' does the banning.", ""]


def render_config(build: _Build, conf_path: str, defaults_path: str) -> str:
    """The new portsentry.conf text."""
    out = _header(conf_path, defaults_path)
    for key, setting in build.settings.items():
        block = build.blocks.get(key, [])
        if block and out[-1]:
            out.append("")
        out += block
        out.append(f'{key}="{setting.value}"')
    if build.dropped:
        out += ["", f"# Not carried over from {conf_path} (see the import report):"]
        out += [f"#   {text}" for text in build.dropped]
    return "\n".join(out).rstrip("\n") + "\n"


def translate(conf_text: str, conf_path: str, defaults_text: str | None, defaults_path: str,
              ignore_target: str) -> tuple[_Build, Config]:
    """Translate and validate; raises ConfigError naming the old file and line."""
    build = _Build()
    _modes(build, defaults_text, defaults_path)
    lines = classify_lines(conf_text, conf_path)
    chosen = _first_wins(lines, conf_path, build)
    attached, loose = _comment_blocks(lines)
    for key, line in chosen.items():
        _translate_key(build, line, conf_path, ignore_target)
        taken = build.settings.get(key)
        if taken is not None and (taken.path, taken.line) == (conf_path, line.number) \
                and line.number in attached:
            build.blocks[key] = [c.text.rstrip() for c in attached[line.number]]
        elif line.number in attached:
            loose += [c.number for c in attached[line.number]]
    if loose:
        build.report.append(Finding("comment", f"{conf_path}:{_ranges(loose)}", "",
                                    f"{len(loose)} comment lines not carried over "
                                    "(not directly above a kept setting); the old file stays in place"))
    if "IGNORE_FILE" not in build.settings:
        build.settings["IGNORE_FILE"] = Setting(ignore_target, conf_path, 0)
        build.report.append(Finding("note", conf_path, "IGNORE_FILE", f"not set; using {ignore_target}"))
    config = build_config(build.settings, conf_path)
    return build, config


def _generated_from(text: str) -> int:
    """First line of portsentry-build-ignore-file's host-address section (0 if none)."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#") and "dynamically fetched" in line:
            return number
    return 0


def _ignore_entry(entry: IgnoreEntry, where: str, seen: set[str], report: list[Finding]) -> str | None:
    """The entry's line to keep, or None (reported)."""
    network = entry.network
    if network is None:
        report.append(Finding("dropped", where, entry.item, "PortSentry's placeholder; the sensor always "
                              "ignores the host's own addresses and loopback"))
        return None
    if str(network) in seen:
        return None
    seen.add(str(network))
    note = f" (means {network})" if "/" in entry.item and str(network) != entry.item else ""
    report.append(Finding("mapped", where, entry.item, "ignored address kept" + note))
    return entry.text


def merge_ignore(static_text: str | None, static_path: str, ignore_text: str | None,
                 ignore_path: str) -> tuple[str, list[Finding]]:
    """The new ignore file: static entries plus hand-added entries of portsentry.ignore."""
    report: list[Finding] = []
    out = ["# portsentry-sensor ignore list, imported by `portsentry-sensor import-config`.",
           "# One address or CIDR per line.  The host's own addresses and loopback are",
           "# always ignored and need not be listed.", ""]
    seen: set[str] = set()
    sources = [(static_text, static_path, 0), (ignore_text, ignore_path, 0)]
    if ignore_text is not None:
        sources[1] = (ignore_text, ignore_path, _generated_from(ignore_text))
    for text, path, generated in sources:
        if text is None:
            report.append(Finding("note", path, "", "missing"))
            continue
        for entry in ignore_entries(text, path):  # a bad line raises IgnoreFileError: FILE:LINE: ...
            where = f"{path}:{entry.line}"
            if generated and entry.line > generated:
                report.append(Finding("dropped", where, entry.text, "host address added by "
                                      "portsentry-build-ignore-file; the sensor finds these itself"))
                continue
            kept = _ignore_entry(entry, where, seen, report)
            if kept is not None:
                out.append(kept)
        comments = [n for n, line in enumerate(text.splitlines(), start=1)
                    if line.strip().startswith("#")]
        if comments:
            report.append(Finding("comment", f"{path}:{_ranges(comments)}", "",
                                  f"{len(comments)} comment lines not carried over"))
    return "\n".join(out) + "\n", report


def import_config(conf_text: str, conf_path: str, defaults_text: str | None, defaults_path: str,
                  static_text: str | None, static_path: str, ignore_text: str | None,
                  ignore_path: str, ignore_target: str) -> Imported:
    """Translate everything; raises ConfigError (ignore-file errors included)."""
    build, config = translate(conf_text, conf_path, defaults_text, defaults_path, ignore_target)
    try:
        ignore_out, ignore_report = merge_ignore(static_text, static_path, ignore_text, ignore_path)
    except IgnoreFileError as exc:
        where, _, what = str(exc).partition(": IGNORE_FILE: ")
        path, _, line = where.rpartition(":")
        raise ConfigError(path, int(line) if line.isdigit() else 0, "IGNORE_FILE", what) from None
    text = render_config(build, conf_path, defaults_path)
    settings, warnings = parse_text(text, conf_path)
    checked = build_config(settings, conf_path, warnings)
    if checked != config:
        raise ConfigError(conf_path, 0, "", "internal error: the rendered config differs")
    return Imported(text, ignore_out, tuple(build.report + ignore_report), config)
