"""The alert record and its rendering: the contract with fail2ban.

One detection is one :class:`Alert`.  :func:`format_alert` turns it into the
syslog/journal MESSAGE and the journald fields of DESIGN.md section 4.  The
message starts with fixed ``key=value`` fields, source address first, so that
no attacker-controlled text (reverse-DNS names) can precede the address that
fail2ban bans.  A prefix alert (sensor/prefixwatch.py) puts the prefix in that
same field (``src=2001:db8:77::/64``) and names the last address of the prefix
in PORTSENTRY_SRC, the prefix in PORTSENTRY_NET.  Pure: no I/O here; the sinks in :mod:`sensor.sinks` write.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, fields
from typing import Any

from sensor.probe import Probe, Touch

# One fixed 128-bit id for every attack alert (journalctl MESSAGE_ID=...).
MESSAGE_ID = "6f0b7d8e3c2a4f1b9d5e8a7c4b3f2e1d"
# The status lines journalctl -x explains too (catalog/portsentry-sensor.catalog): the
# sensor started, and the flood guard's start/report/end lines (sensor/flood.py).  Other
# status lines carry no id.
START_MESSAGE_ID = "03243c74434a49558a9c90c6d1b57322"
FLOOD_MESSAGE_ID = "4f1ead5f40604bc79d3448e6df48e046"
SYSLOG_IDENTIFIER = "portsentry-sensor"
PRIORITY_NOTICE = 5
PRIORITY_WARNING = 4
PRIORITY_ERR = 3
FACILITY_DAEMON = 3

SCAN_TYPES = ("connect", "syn", "fin", "null", "xmas", "udp", "unknown")
PROTOS = ("tcp", "udp")

_SCAN_TEXT = {
    "connect": "TCP connect",
    "syn": "TCP SYN",
    "fin": "TCP FIN",
    "null": "TCP NULL",
    "xmas": "TCP XMAS",
    "udp": "UDP",
    "unknown": "TCP unknown-flags",
}

# Characters allowed in a reverse-DNS name once escaped into the last field.
_SAFE_HOST = re.compile(r"[^A-Za-z0-9.-]")


_PROBE_FIELDS = tuple(f.name for f in fields(Probe))


@dataclass(frozen=True)
class Alert(Touch):
    """One detection: a source touched a watched port (or a summary of many).

    The probe's fields (:class:`sensor.probe.Touch`, then ``flags``) keep their
    order, so ``Alert(src, dst, proto, dport, scan, mode, verified, count)`` reads as before.
    """

    count: int
    summary: bool = False
    window: int = 0
    flags: str = ""
    hostname: str = ""
    net: str = ""        # a prefix alert (sensor/prefixwatch.py): the prefix, e.g. 2001:db8:77::/64
    addresses: int = 0   # a prefix alert: distinct addresses of the prefix seen in the window

    @classmethod
    def from_probe(cls, probe: Probe, count: int, **extra: Any) -> Alert:
        """The alert for ``probe`` (every field of the probe, then ``count`` and ``extra``)."""
        return cls(**{name: getattr(probe, name) for name in _PROBE_FIELDS}, count=count, **extra)


def _validate(alert: Alert) -> None:
    """Refuse records that would break the line format (programming errors)."""
    ipaddress.ip_address(alert.src)
    ipaddress.ip_address(alert.dst)
    if alert.proto not in PROTOS or alert.scan not in SCAN_TYPES:
        raise ValueError(f"bad proto/scan {alert.proto}/{alert.scan}")
    if not 0 <= alert.dport <= 65535 or alert.count < 1:
        raise ValueError("bad dport/count")
    if not alert.mode.isalpha():
        raise ValueError(f"bad mode {alert.mode!r}")
    if alert.net:
        net = ipaddress.ip_network(alert.net)  # strict: no host bits
        low, high = (32, 64) if net.version == 6 else (16, 31)
        if not low <= net.prefixlen <= high or alert.addresses < 1 or alert.hostname:
            raise ValueError(f"bad prefix alert {alert.net!r}")


def escape_hostname(name: str) -> str:
    """Reduce a reverse-DNS name to inert text: letters, digits, dots, dashes."""
    return _SAFE_HOST.sub("_", name)[:253]


def _free_text(alert: Alert) -> str:
    proto = alert.proto.upper()
    kind = _SCAN_TEXT[alert.scan]
    if alert.flags:
        kind = f"{kind} ({alert.flags})"
    who = f"net {alert.net} by {alert.addresses} addresses" if alert.net else f"host {alert.src}"
    if alert.summary:
        return (f"{kind} scan from {who} continues: {alert.count} "
                f"{proto} ports in the last {alert.window} s")
    return f"{kind} scan from {who} to {proto} port {alert.dport}"


def format_alert(alert: Alert) -> tuple[str, dict[str, str]]:
    """Return (MESSAGE, journald fields) for one alert."""
    _validate(alert)
    verified = "yes" if alert.verified else "no"
    head = (f"attackalert: src={alert.net or alert.src} dst={alert.dst} proto={alert.proto} "
            f"dport={alert.dport} scan={alert.scan} mode={alert.mode} "
            f"verified={verified} count={alert.count}")
    message = f"{head} {_free_text(alert)}"
    if alert.hostname:
        message = f"{message} host={escape_hostname(alert.hostname)}"
    fields = {
        "MESSAGE_ID": MESSAGE_ID,
        "PRIORITY": str(PRIORITY_NOTICE),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
        "SYSLOG_FACILITY": str(FACILITY_DAEMON),
        "PORTSENTRY_SRC": alert.src,
        "PORTSENTRY_DST": alert.dst,
        "PORTSENTRY_PROTO": alert.proto,
        "PORTSENTRY_DPORT": str(alert.dport),
        "PORTSENTRY_SCAN": alert.scan,
        "PORTSENTRY_MODE": alert.mode,
        "PORTSENTRY_VERIFIED": verified,
        "PORTSENTRY_COUNT": str(alert.count),
    }
    if alert.summary:
        fields["PORTSENTRY_SUMMARY"] = "1"
    if alert.net:
        fields["PORTSENTRY_NET"] = alert.net
        fields["PORTSENTRY_ADDRESSES"] = str(alert.addresses)
    return message, fields


def format_admin(text: str) -> str:
    """A sensor status line: never matches the fail2ban filter."""
    return f"adminalert: {text}"
