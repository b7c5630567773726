"""The file-backend variant (rsyslog writing /var/log/syslog), and why it is less safe.

`portsentry-sensor fail2ban-config --backend file` renders the .local; fail2ban
then reads alerts from a syslog file.  Here the test plays rsyslog (appending
lines in its format) because the lab has no rsyslog: an alert line bans its src=
address in nftables; another program's line never does; but a line that any
local user could have sent with `logger -t portsentry-sensor` bans too, which is
what the README ("The file-backend variant") warns about.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from f2b import Fail2Ban
from lab import ATTACKER4, VICTIM4, Lab, world_readable_dir

from sensor.alert import Alert, format_alert
from sensor.fail2banconfig import JailChoices, render, validate

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FORGED = "198.51.100.88"


@pytest.fixture(scope="module")
def f2b_file() -> Iterator[tuple[Fail2Ban, Path]]:
    """fail2ban in the victim, reading a syslog file, configured by fail2ban-config."""
    with Lab("psjfile") as lab:
        workdir = world_readable_dir("portsentry-f2bfile-")
        syslog = workdir / "syslog"
        syslog.write_text("")
        choices = JailChoices(backend="file", logpath=str(syslog), bantime="30",
                              ignoreip=("127.0.0.0/8", "::1"))
        validate(choices)
        f2b = Fail2Ban(lab, workdir, render(choices))
        try:
            f2b.start()
            yield f2b, syslog
        finally:
            f2b.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def syslog_line(tag: str, message: str) -> str:
    """A line as rsyslog writes it to /var/log/syslog."""
    return f"{time.strftime('%b %e %H:%M:%S')} victim {tag}: {message}\n"


def test_an_alert_in_the_syslog_file_bans(f2b_file: tuple[Fail2Ban, Path]) -> None:
    f2b, syslog = f2b_file
    message, _ = format_alert(Alert(ATTACKER4, VICTIM4, "tcp", 111, "syn", "atcp", False, 1))
    with syslog.open("a") as handle:
        handle.write(syslog_line("sshd[99]", message))
        handle.write(syslog_line("portsentry-sensor[4242]", "adminalert: started"))
        handle.write(syslog_line("portsentry-sensor[4242]", message))
    f2b.wait_in_set(ATTACKER4, timeout=15)
    assert f2b.client("status", "portsentry").stdout.count("Total failed:\t1") == 1


def test_but_any_local_user_can_forge_such_a_line(f2b_file: tuple[Fail2Ban, Path]) -> None:
    """What `logger -t portsentry-sensor` by any user would put in the file: it bans."""
    f2b, syslog = f2b_file
    message, _ = format_alert(Alert(FORGED, VICTIM4, "tcp", 22, "connect", "tcp", True, 1))
    with syslog.open("a") as handle:
        handle.write(syslog_line("portsentry-sensor", message))
    f2b.wait_in_set(FORGED, timeout=15)
