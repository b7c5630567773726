"""portsentry-sensor: a log-only port-scan sensor whose alerts fail2ban turns into bans.

The sensor detects scans and writes one structured ``attackalert`` event per
detection; it never touches the firewall (doc/DESIGN.md §1).
"""

from __future__ import annotations

__version__ = "0.1.0"
