"""sd_notify(3) without libsystemd: READY=1, STATUS=..., WATCHDOG=1, RELOADING=1.

Builders are pure; :func:`send` is the one function that touches the socket
and returns False instead of raising (no NOTIFY_SOCKET: nothing to do).
"""

from __future__ import annotations

import os
import socket


def ready(status: str) -> str:
    """READY=1 with a status line."""
    return f"READY=1\nSTATUS={status}"


def status(text: str) -> str:
    """A STATUS= update."""
    return f"STATUS={text}"


def reloading() -> str:
    """RELOADING=1."""
    return "RELOADING=1"


def stopping() -> str:
    """STOPPING=1."""
    return "STOPPING=1"


def watchdog() -> str:
    """WATCHDOG=1."""
    return "WATCHDOG=1"


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def send(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send one notification; False if there is no socket or it fails."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True
