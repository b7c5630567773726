"""The jail pack as fail2ban reads it: ``fail2ban-client -d`` dumps the command stream.

Checks what DESIGN.md section 5 requires of jail.d/portsentry.conf without running
a server: backend systemd, a trusted journalmatch that a .local replaces (not adds
to), nftables on all ports for TCP and UDP (the libnftables action by
default, the stock one on request), explicit times, increasing bans without
maxtime (it would clip restored permanent bans), the escalation action, and the
filter's mode parameter reaching the failregex.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pristine import copy_pristine

JAIL = "portsentry"


def dump(confdir: Path, local: str | None) -> list[list[Any]]:
    """The commands fail2ban-client would send for our jail (with an optional .local)."""
    work = confdir.parent / f"dump-{abs(hash(local))}"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(confdir, work, symlinks=True)
    for stale in (work / "jail.d").glob("*"):
        if not stale.name.startswith("portsentry"):
            stale.unlink()
    (work / "jail.local").unlink(missing_ok=True)
    if local is not None:
        (work / "jail.d" / "portsentry.local").write_text(local)
    result = subprocess.run(["fail2ban-client", "-c", str(work), "-d"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    commands = [ast.literal_eval(line) for line in result.stdout.splitlines() if line.startswith("[")]
    return [c for c in commands if len(c) > 1 and c[1] == JAIL]


@pytest.fixture(scope="module")
def pack_confdir(f2b_confdir: Path) -> Path:
    """The filter-test config dir, plus our jail.d."""
    pack = Path(__file__).resolve().parents[2] / "fail2ban" / "jail.d"
    for item in pack.glob("*"):
        shutil.copy(item, f2b_confdir / "jail.d" / item.name)
    return f2b_confdir


def settings(commands: list[list[Any]]) -> dict[str, Any]:
    """``set portsentry KEY VALUE`` commands as a dict (repeated keys: list)."""
    found: dict[str, Any] = {}
    for command in commands:
        if command[0] == "set" and len(command) >= 4:
            key, value = command[2], command[3:] if len(command) > 4 else command[3]
            if key in found:
                found[key] = [*found[key], value] if isinstance(found[key], list) else [found[key], value]
            else:
                found[key] = value
    return found


def test_shipped_jail(pack_confdir: Path) -> None:
    """The shipped jail as a Debian admin gets it, before any .local."""
    commands = dump(pack_confdir, None)
    assert ["add", JAIL, "systemd"] in commands
    conf = settings(commands)
    assert conf["addjournalmatch"] == "_SYSTEMD_UNIT=portsentry-sensor.service"
    assert conf["usedns"] == "no"
    assert conf["maxretry"] == 1
    assert conf["bantime"] == "10m" and conf["findtime"] == "10m"
    assert conf["bantime.increment"] is True
    assert conf["bantime.multipliers"] == "1 6 36"
    assert conf.get("bantime.maxtime", "") == ""
    assert "verified=(?:yes|no)" in conf["addfailregex"]
    actions = [c[3] for c in commands if c[:3] == ["set", JAIL, "addaction"]]
    # The default ban path: libnftables in fail2ban's process (action.d/portsentry-nft.py),
    # loaded by path with the stock action's parameters (so the two stay interchangeable).
    assert actions == ["portsentry-nft", "portsentry-escalate"]
    escalate = next(c for c in commands if c[:4] == ["set", JAIL, "addaction", "portsentry-escalate"])
    assert escalate[5] == '{"after": "4", "window": "1d"}'
    nft = next(c for c in commands if c[:4] == ["set", JAIL, "addaction", "portsentry-nft"])
    assert nft[4].endswith("/action.d/portsentry-nft.py")
    assert json.loads(nft[5]) == {"name": "portsentry", "port": "0:65535", "protocol": "tcp,udp"}


def test_local_can_go_back_to_the_stock_nftables_action(pack_confdir: Path) -> None:
    """`banaction = nftables[type=allports]` in the .local (the documented way back): the stock
    shell action on all ports, TCP and UDP, in the same sets."""
    commands = dump(pack_confdir, "[portsentry]\nbanaction = nftables[type=allports]\n")
    actions = [c[3] for c in commands if c[:3] == ["set", JAIL, "addaction"]]
    assert actions == ["nftables", "portsentry-escalate"]
    nft = dict(next(c for c in commands if c[0] == "multi-set" and c[3] == "nftables")[4])
    assert nft["type"] == "allports" and nft["protocol"] == "tcp,udp"
    assert "meta l4proto \\{ tcp,udp \\}" in nft["actionstart"]
    assert nft["addr_set?family=inet6"] == "addr6-set-<name>"


def test_local_replaces_journalmatch_and_sets_mode(pack_confdir: Path) -> None:
    """A .local's journalmatch replaces the shipped one (an [Init] value would be OR-ed)."""
    local = "[portsentry]\njournalmatch = _UID=999\nmode = verified\nescalate_after = 2\n"
    conf = settings(dump(pack_confdir, local))
    assert conf["addjournalmatch"] == "_UID=999"
    assert "verified=yes count" in conf["addfailregex"]


def test_rendered_local_is_what_fail2ban_reads(pack_confdir: Path) -> None:
    """`portsentry-sensor fail2ban-config` output, read by fail2ban: ignoreip, times, journalmatch."""
    from sensor.fail2banconfig import JailChoices, render, validate
    choices = JailChoices(bantime="1h", findtime="5m", maxretry=2, escalate_after=3, mode="verified",
                          journalmatch="_UID=998", ignoreip=("127.0.0.0/8", "::1", "192.0.2.0/24"))
    validate(choices)
    conf = settings(dump(pack_confdir, render(choices)))
    assert conf["addignoreip"] == ["127.0.0.0/8", "::1", "192.0.2.0/24"]
    assert conf["bantime"] == "1h" and conf["findtime"] == "5m" and conf["maxretry"] == 2
    assert conf["addjournalmatch"] == "_UID=998"
    assert "verified=yes count" in conf["addfailregex"]


def test_rendered_file_backend(pack_confdir: Path) -> None:
    """The less safe variant: a syslog file, no journal match."""
    from sensor.fail2banconfig import JailChoices, render
    syslog = pack_confdir.parent / "syslog"
    syslog.write_text("")
    commands = dump(pack_confdir, render(JailChoices(backend="file", logpath=str(syslog),
                                                     ignoreip=("127.0.0.0/8",))))
    assert ["add", JAIL, "auto"] in commands
    conf = settings(commands)
    assert "addjournalmatch" not in conf
    assert conf["addlogpath"][0] == str(syslog)


@pytest.fixture(scope="module")
def pristine_confdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the files Debian's fail2ban package owns under /etc/fail2ban (no admin .local, no
    distribution jails), plus our pack: what `fail2ban-client -t` sees on a fresh install."""
    confdir = copy_pristine(tmp_path_factory.mktemp("pristine") / "fail2ban")
    for distribution_jail in (confdir / "jail.d").glob("*"):
        distribution_jail.unlink()
    pack = Path(__file__).resolve().parents[2] / "fail2ban"
    for sub in ("filter.d", "action.d", "jail.d"):
        (confdir / sub).mkdir(parents=True, exist_ok=True)
        for item in sorted((pack / sub).glob("*")):
            shutil.copy(item, confdir / sub / item.name)
    return confdir


def config_test(confdir: Path, local: str | None, flag: str = "-t") -> subprocess.CompletedProcess[str]:
    """`fail2ban-client -c <dir> -t` (or -d) with an optional jail.d/portsentry.local."""
    local_file = confdir / "jail.d" / "portsentry.local"
    local_file.unlink(missing_ok=True)
    if local is not None:
        local_file.write_text(local)
    try:
        return subprocess.run(["fail2ban-client", "-c", str(confdir), flag],
                              capture_output=True, text=True, timeout=60, check=False)
    finally:
        local_file.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", [None, "all", "verified"])
def test_config_test_passes_for_both_modes(pristine_confdir: Path, mode: str | None) -> None:
    local = None if mode is None else f"[portsentry]\nmode = {mode}\n"
    result = config_test(pristine_confdir, local)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configuration test is successful" in result.stdout


@pytest.mark.parametrize("typo", ["verfied", "", "all verified", "yes"])
def test_a_typo_in_mode_fails_the_config_test(pristine_confdir: Path, typo: str) -> None:
    """Issue 12 item 6: `mode = verfied` used to pass `fail2ban-client -t` and ban nothing."""
    result = config_test(pristine_confdir, f"[portsentry]\nmode = {typo}\n")
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Unable to read action '<unknown_mode_" in output, output


def test_a_typo_in_mode_makes_fail2ban_skip_the_jail_at_start(pristine_confdir: Path) -> None:
    """What a start would send: the jail replaced by a config-error naming the mode, nothing else."""
    result = config_test(pristine_confdir, "[portsentry]\nmode = verfied\n", flag="-d")
    commands = [ast.literal_eval(line) for line in result.stdout.splitlines() if line.startswith("[")]
    errors = [c for c in commands if c[0] == "config-error"]
    assert len(errors) == 1 and "'portsentry'" in errors[0][1] and "verfied" in errors[0][1], errors
    assert not [c for c in commands if len(c) > 1 and c[1] == JAIL], commands
