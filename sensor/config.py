"""Configuration in PortSentry's own syntax (``KEY="value"``, ``#`` comments).

An existing ``/etc/portsentry/portsentry.conf`` loads as-is: keys that would
block (BLOCK_*, KILL_*) are accepted and ignored with one warning, because
fail2ban does the banning.  Mode keys that the file does not set are read from
``/etc/default/portsentry`` (where PortSentry kept them).  Every error is one
:class:`ConfigError` naming file, line and key; nothing is half-applied because
:func:`load_config` returns a new frozen :class:`Config` or raises.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sensor.portspec import PortSpecError, parse_ports

DEFAULT_CONFIG = "/etc/portsentry-sensor/portsentry.conf"
DEFAULT_DEFAULTS = ("/etc/default/portsentry-sensor", "/etc/default/portsentry")

TCP_MODES = ("tcp", "stcp", "atcp")
UDP_MODES = ("udp", "sudp", "audp")
LOG_TARGETS = ("auto", "journal", "syslog", "stderr")

# PortSentry keys that would block or run commands: accepted, never executed.
BLOCKING_KEYS = ("BLOCK_TCP", "BLOCK_UDP", "KILL_ROUTE", "KILL_HOSTS_DENY",
                 "KILL_RUN_CMD", "KILL_RUN_CMD_FIRST")
# PortSentry keys we have no use for (its own state files): accepted silently.
LEGACY_KEYS = ("HISTORY_FILE", "BLOCKED_FILE", "PORTSENTRY_PATH")

_LINE = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$')


class ConfigError(Exception):
    """One configuration error: ``FILE:LINE: KEY: what is wrong``."""

    def __init__(self, path: str, line: int, key: str, what: str) -> None:
        self.path, self.line, self.key, self.what = path, line, key, what
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {what}" if key else f"{where}: {what}")


@dataclass(frozen=True)
class Setting:
    """A raw value as read, with where it came from."""

    value: str
    path: str
    line: int


@dataclass(frozen=True)
class Config:
    """A validated configuration.  Defaults are the shipped ones."""

    tcp_modes: tuple[str, ...] = ("atcp",)
    udp_modes: tuple[str, ...] = ("audp",)
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    advanced_ports_tcp: int = 1024
    advanced_ports_udp: int = 1024
    advanced_exclude_tcp: tuple[int, ...] = (113, 139)
    advanced_exclude_udp: tuple[int, ...] = (67, 137, 138, 520)
    ignore_file: str = "/etc/portsentry-sensor/portsentry.ignore"
    scan_trigger: int = 0
    port_banner: str = ""
    resolve_host: bool = False
    log_target: str = "auto"
    scan_window: int = 300
    summary_interval: int = 30
    summary_max_lines: int = 2
    state_max_sources: int = 4096
    flood_sources: int = 20
    flood_ports: int = 5
    plan_refresh: int = 2
    metrics_dir: str = ""
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32
    prefix_addresses: int = 2
    path: str = ""
    warnings: tuple[str, ...] = field(default=(), compare=False)
    origins: tuple[tuple[str, str], ...] = field(default=(), compare=False)


def _unquote(raw: str) -> str:
    """Strip PortSentry quoting: ``"value"`` (with an optional trailing comment)."""
    if raw.startswith('"'):
        end = raw.find('"', 1)
        if end == -1:
            raise ValueError("missing closing quote")
        rest = raw[end + 1:].strip()
        if rest and not rest.startswith("#"):
            raise ValueError(f"unexpected text after the closing quote: {rest!r}")
        return raw[1:end]
    return raw.split("#", 1)[0].strip()


def _printable(value: str) -> None:
    """Refuse control characters: a NUL byte cannot be in a path, a banner or a number."""
    bad = next((c for c in value if c != "\t" and (ord(c) < 32 or ord(c) == 127)), None)
    if bad == "\0":
        raise ValueError("contains a NUL byte")
    if bad is not None:
        raise ValueError(f"contains a control character ({bad!r})")


def parse_text(text: str, path: str, *, shell: bool = False) -> tuple[dict[str, Setting], list[str]]:
    """Read ``KEY="value"`` lines as PortSentry did; every line it would skip is warned about.

    PortSentry's ``ConfigTokenRetrieve()`` stops at the first line naming a key: that line wins, and
    if its value has no quotes the key is skipped (left at its default) and later lines for it are
    never read.  ``shell=True`` reads a file the init script sourced (/etc/default/portsentry):
    unquoted words count and the last assignment wins, as in sh.
    """
    settings: dict[str, Setting] = {}
    first: dict[str, int] = {}
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ConfigError(path, number, "", f"not a KEY=\"value\" line: {stripped[:60]!r}")
        key, raw = match.group(1), match.group(2)
        try:
            value = _unquote(raw)
            _printable(value)
        except ValueError as exc:
            raise ConfigError(path, number, key, str(exc)) from None
        if shell:
            if key in settings:
                warnings.append(f"{path}:{number}: {key}: overrides line {settings[key].line}")
            settings[key] = Setting(value, path, number)
            continue
        if key in first:
            warnings.append(f"{path}:{number}: {key}: repeated, ignored: PortSentry read only line {first[key]}")
            continue
        first[key] = number
        if not raw.startswith('"'):
            warnings.append(f"{path}:{number}: {key}: no quotes around the value: skipped, as PortSentry "
                            f'did (write {key}="...")')
            continue
        settings[key] = Setting(value, path, number)
    return settings, warnings


def read_file(path: str) -> str:
    """Read a config file; errors name the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise ConfigError(path, 0, "", "not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(path, 0, "", exc.strerror or str(exc)) from None


def _modes(value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    words = [w for w in re.split(r"[\s,]+", value.strip().lower()) if w]
    if words in ([], ["off"]):
        return ()
    for word in words:
        if word not in allowed:
            raise ValueError(f"'{word}' is not one of {', '.join((*allowed, 'off'))}")
    if len(words) != len(set(words)):
        raise ValueError(f"'{value.strip()}' repeats a mode")
    if sum(1 for w in words if w[0] in "sa") > 1:
        raise ValueError(f"'{value.strip()}' combines two raw-socket modes; pick one")
    return tuple(words)


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        text = value.strip()
        if not re.fullmatch(r"-?[0-9]{1,9}", text) or not low <= int(text) <= high:
            raise ValueError(f"'{text}' is not a whole number from {low} to {high}")
        return int(text)
    return parse


def _flag(value: str) -> bool:
    if value.strip() not in ("0", "1"):
        raise ValueError(f"'{value.strip()}' is not 0 or 1")
    return value.strip() == "1"


def _ports(value: str) -> tuple[int, ...]:
    try:
        return parse_ports(value)
    except PortSpecError as exc:
        raise ValueError(str(exc)) from None


def _banner(value: str) -> str:
    if len(value) > 512:
        raise ValueError("longer than 512 characters")
    return value


def _log_target(value: str) -> str:
    if value.strip() not in LOG_TARGETS:
        raise ValueError(f"'{value.strip()}' is not one of {', '.join(LOG_TARGETS)}")
    return value.strip()


def _path(value: str) -> str:
    if value and not value.startswith("/"):
        raise ValueError(f"'{value}' is not an absolute path")
    return value


def _ipv6_prefix(value: str) -> int:
    """IPV6_PREFIX: 32..64 (the filter never bans a shorter prefix), or 128: per address."""
    text = value.strip()
    if not re.fullmatch(r"[0-9]{1,3}", text) or not (32 <= int(text) <= 64 or int(text) == 128):
        raise ValueError(f"'{text}' is not a prefix length from 32 to 64, or 128 (off)")
    return int(text)


_FIELDS: dict[str, tuple[str, Callable[[str], object]]] = {
    "TCP_MODE": ("tcp_modes", lambda v: _modes(v, TCP_MODES)),
    "UDP_MODE": ("udp_modes", lambda v: _modes(v, UDP_MODES)),
    "TCP_PORTS": ("tcp_ports", _ports),
    "UDP_PORTS": ("udp_ports", _ports),
    "ADVANCED_PORTS_TCP": ("advanced_ports_tcp", _int_in(1, 65535)),
    "ADVANCED_PORTS_UDP": ("advanced_ports_udp", _int_in(1, 65535)),
    "ADVANCED_EXCLUDE_TCP": ("advanced_exclude_tcp", _ports),
    "ADVANCED_EXCLUDE_UDP": ("advanced_exclude_udp", _ports),
    "IGNORE_FILE": ("ignore_file", _path),
    "SCAN_TRIGGER": ("scan_trigger", _int_in(0, 65535)),
    "PORT_BANNER": ("port_banner", _banner),
    "RESOLVE_HOST": ("resolve_host", _flag),
    "LOG_TARGET": ("log_target", _log_target),
    "SCAN_WINDOW": ("scan_window", _int_in(1, 86400)),
    "SUMMARY_INTERVAL": ("summary_interval", _int_in(1, 86400)),
    "SUMMARY_MAX_LINES": ("summary_max_lines", _int_in(0, 100)),
    # One tracked (source, protocol) costs ~0.7 KiB, ~9 KiB once it touched more than 64 ports
    # (bench/state_memory.py): 65,536 bounds that at ~570 MiB.
    "STATE_MAX_SOURCES": ("state_max_sources", _int_in(16, 65536)),
    "FLOOD_SOURCES": ("flood_sources", _int_in(0, 1_000_000)),
    "FLOOD_PORTS": ("flood_ports", _int_in(1, 65535)),
    "PLAN_REFRESH": ("plan_refresh", _int_in(1, 3600)),
    # Rotating sources, sensor/prefixwatch.py: addresses of one prefix are one actor.
    "IPV6_PREFIX": ("ipv6_prefix", _ipv6_prefix),
    "IPV4_PREFIX": ("ipv4_prefix", _int_in(16, 32)),
    "PREFIX_ADDRESSES": ("prefix_addresses", _int_in(2, 65535)),
    "METRICS_DIR": ("metrics_dir", lambda v: v.strip() if v.strip() in ("auto", "") else _path(v.strip())),
}
KNOWN_KEYS = tuple(_FIELDS) + BLOCKING_KEYS + LEGACY_KEYS
MODE_KEYS = ("TCP_MODE", "UDP_MODE")


def _blocking_warning(settings: dict[str, Setting]) -> str | None:
    active = [k for k in BLOCKING_KEYS if k in settings
              and settings[k].value.strip() not in ("", "0")]
    if not active:
        return None
    first = settings[active[0]]
    return (f"{first.path}:{first.line}: {', '.join(active)}: ignored: "
            "portsentry-sensor never blocks, fail2ban does the banning "
            "(jail 'portsentry')")


def build_config(settings: dict[str, Setting], path: str,
                 warnings: Iterable[str] = ()) -> Config:
    """Validate raw settings into a Config; the first error raises ConfigError."""
    values: dict[str, object] = {}
    notes = list(warnings)
    for key, setting in settings.items():
        if key not in _FIELDS:
            if key not in BLOCKING_KEYS + LEGACY_KEYS:
                notes.append(f"{setting.path}:{setting.line}: {key}: unknown key, ignored")
            continue
        name, parse = _FIELDS[key]
        try:
            values[name] = parse(setting.value)
        except ValueError as exc:
            raise ConfigError(setting.path, setting.line, key, str(exc)) from None
    blocking = _blocking_warning(settings)
    if blocking:
        notes.append(blocking)
    if values.get("ipv4_prefix", 32) != 32:
        where = settings["IPV4_PREFIX"]
        notes.append(f"{where.path}:{where.line}: IPV4_PREFIX: /{values['ipv4_prefix']}: addresses of one "
                     f"IPv4 /{values['ipv4_prefix']} count as one scanner and the whole network is banned; "
                     "behind carrier-grade NAT (100.64.0.0/10) or a shared proxy that is many innocent users")
    origins = tuple((k, f"{s.path}:{s.line}") for k, s in settings.items())
    config = Config(path=path, warnings=tuple(notes), origins=origins, **values)  # type: ignore[arg-type]
    _check_consistency(config, settings, path)
    return config


def _check_consistency(config: Config, settings: dict[str, Setting], path: str) -> None:
    """Cross-key rules: bound/stealth modes need their port list."""
    for modes, ports, key, plain in ((config.tcp_modes, config.tcp_ports, "TCP_PORTS", ("tcp", "stcp")),
                                     (config.udp_modes, config.udp_ports, "UDP_PORTS", ("udp", "sudp"))):
        if any(m in plain for m in modes) and not ports:
            where = settings.get(key)
            raise ConfigError(where.path if where else path, where.line if where else 0, key,
                              f"empty, but mode {'/'.join(m for m in modes if m in plain)} needs ports")
    if not config.tcp_modes and not config.udp_modes:
        mode = settings.get("TCP_MODE")
        raise ConfigError(mode.path if mode else path, mode.line if mode else 0, "TCP_MODE",
                          "TCP_MODE and UDP_MODE are both off: nothing to watch")


def load_config(path: str = DEFAULT_CONFIG,
                defaults: Iterable[str] | None = None) -> Config:
    """Load and validate ``path``; mode keys it lacks come from a defaults file."""
    settings, warnings = parse_text(read_file(path), path)
    candidates = DEFAULT_DEFAULTS if defaults is None else tuple(defaults)
    missing = [k for k in MODE_KEYS if k not in settings]
    for candidate in candidates:
        if not missing or not os.path.exists(candidate):
            continue
        extra, extra_warnings = parse_text(read_file(candidate), candidate, shell=True)
        for key in missing:
            if key in extra:
                settings[key] = extra[key]
        warnings += extra_warnings
        break
    return build_config(settings, path, warnings)
