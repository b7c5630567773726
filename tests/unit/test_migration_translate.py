"""Translating PortSentry configurations (sensor/migration/translate.py) over tests/roots/ trees."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from repopaths import ROOTS

from sensor.config import ConfigError, load_config
from sensor.migration.translate import Imported, classify_lines, import_config, merge_ignore


def _read(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def run_import(case: str, target: Path) -> Imported:
    etc = ROOTS / case / "etc"
    conf = etc / "portsentry" / "portsentry.conf"
    return import_config(conf.read_text(), str(conf), _read(etc / "default" / "portsentry"),
                         str(etc / "default" / "portsentry"),
                         _read(etc / "portsentry" / "portsentry.ignore.static"),
                         str(etc / "portsentry" / "portsentry.ignore.static"),
                         _read(etc / "portsentry" / "portsentry.ignore"),
                         str(etc / "portsentry" / "portsentry.ignore"), str(target / "portsentry.ignore"))


def verdicts(imported: Imported) -> dict[str, str]:
    return {f.key: f.verdict for f in imported.report if f.key}


@pytest.mark.parametrize("case", ["debian-stock", "howto-block", "howto-notify"])
def test_generated_config_loads_with_load_config(case: str, tmp_path: Path) -> None:
    imported = run_import(case, tmp_path)
    (tmp_path / "portsentry.conf").write_text(imported.config_text)
    (tmp_path / "portsentry.ignore").write_text(imported.ignore_text)
    loaded = load_config(str(tmp_path / "portsentry.conf"), defaults=())
    assert dataclasses.replace(loaded, path=imported.config.path) == imported.config
    assert loaded.ignore_file == str(tmp_path / "portsentry.ignore")
    assert not any("unknown key" in w for w in loaded.warnings)


def test_debian_stock_keeps_modes_ports_and_drops_blocking(tmp_path: Path) -> None:
    imported = run_import("debian-stock", tmp_path)
    config = imported.config
    assert (config.tcp_modes, config.udp_modes) == (("tcp",), ("udp",))
    assert config.tcp_ports[:3] == (1, 11, 15) and config.scan_trigger == 0
    assert config.advanced_exclude_udp == (67, 137, 138, 520)
    seen = verdicts(imported)
    for key in ("BLOCK_TCP", "BLOCK_UDP", "KILL_ROUTE", "KILL_HOSTS_DENY", "HISTORY_FILE", "BLOCKED_FILE"):
        assert seen[key] == "dropped"
        assert key + "=" not in imported.config_text.replace("#   " + key, "")
    assert seen["IGNORE_FILE"] == "changed"
    assert seen["TCP_PORTS"] == "mapped"


def test_every_active_line_is_reported(tmp_path: Path) -> None:
    """Comments and unknown keys are reported, never silently lost."""
    for case in ("debian-stock", "howto-block", "howto-notify"):
        conf = ROOTS / case / "etc" / "portsentry" / "portsentry.conf"
        imported = run_import(case, tmp_path)
        reported = {f.where for f in imported.report}
        comment_spans = " ".join(f.where for f in imported.report if f.verdict == "comment")
        for line in classify_lines(conf.read_text(), str(conf)):
            if line.key:
                assert f"{conf}:{line.number}" in reported, (case, line)
            elif line.text.strip().startswith("#"):
                carried = line.text.rstrip() in imported.config_text
                assert carried or str(conf) in comment_spans, (case, line)


def test_blocking_reasons_say_fail2ban(tmp_path: Path) -> None:
    imported = run_import("howto-block", tmp_path)
    kill = [f for f in imported.report if f.key.startswith("KILL_") or f.key.startswith("BLOCK_")]
    assert len(kill) == 6
    assert all("fail2ban" in f.why for f in kill)


def test_howto_modes_come_from_etc_default_not_portsentry_conf(tmp_path: Path) -> None:
    """The how-to also wrote TCP_MODE into portsentry.conf, which PortSentry never read."""
    imported = run_import("howto-block", tmp_path)
    assert imported.config.tcp_modes == ("atcp",) and imported.config.udp_modes == ("audp",)
    conf_modes = [f for f in imported.report if f.key == "TCP_MODE" and "portsentry.conf" in f.where]
    assert conf_modes and conf_modes[0].verdict == "dropped"
    assert imported.config.scan_trigger == 1


def test_howto_ignore_static_cidrs_carried_over(tmp_path: Path) -> None:
    imported = run_import("howto-block", tmp_path)
    entries = [line for line in imported.ignore_text.splitlines() if line and not line.startswith("#")]
    assert entries == ["127.0.0.1/32", "198.51.100.0/24", "192.0.2.0/25   # lab", "203.0.113.77"]
    placeholder = [f for f in imported.report if f.key == "0.0.0.0"]
    assert placeholder[0].verdict == "dropped"


def test_first_occurrence_wins_like_portsentry(tmp_path: Path) -> None:
    imported = run_import("howto-notify", tmp_path)
    assert imported.config.scan_trigger == 2
    repeated = [f for f in imported.report if f.key == "SCAN_TRIGGER" and f.verdict == "dropped"]
    assert "PortSentry used line 17" in repeated[0].why
    assert '#   SCAN_TRIGGER="5"' in imported.config_text


def test_unknown_key_and_notify_command_reported(tmp_path: Path) -> None:
    imported = run_import("howto-notify", tmp_path)
    seen = verdicts(imported)
    assert seen["MAIL_TO"] == "unknown"
    assert '#   MAIL_TO="root"' in imported.config_text
    notify = next(f for f in imported.report if f.key == "KILL_RUN_CMD")
    assert "fail2ban action" in notify.why
    assert imported.config.tcp_modes == ("stcp",)
    assert imported.config.port_banner.startswith("** UNAUTHORIZED")


def test_generated_ignore_drops_build_ignore_file_host_addresses() -> None:
    text, report = merge_ignore("10.0.0.0/8\n", "s", "# IPs from s:\n10.0.0.0/8\n\n"
                                "# dynamically fetched IPs(via ifconfig -a):\n192.0.2.1\n", "i")
    assert "192.0.2.1" not in text and "10.0.0.0/8" in text
    assert [f.verdict for f in report if f.key == "192.0.2.1"] == ["dropped"]


def test_hand_added_portsentry_ignore_entries_kept() -> None:
    """How-to 004 edited portsentry.ignore directly."""
    text, _ = merge_ignore(None, "s", "127.0.0.1\n203.0.113.5\n", "i")
    assert "203.0.113.5" in text


def test_attached_comment_travels_with_its_setting(tmp_path: Path) -> None:
    imported = run_import("howto-block", tmp_path)
    assert "# one grace port before reacting\nSCAN_TRIGGER=\"1\"" in imported.config_text
    assert "# changed by admin: block both" not in imported.config_text


def test_missing_defaults_file_means_default_modes(tmp_path: Path) -> None:
    conf = ROOTS / "debian-stock" / "etc" / "portsentry" / "portsentry.conf"
    imported = import_config(conf.read_text(), str(conf), None, "/etc/default/portsentry", None, "s",
                             None, "i", str(tmp_path / "portsentry.ignore"))
    assert imported.config.tcp_modes == ("atcp",)
    assert any(f.verdict == "note" and "would not have started" in f.why for f in imported.report)


@pytest.mark.parametrize(("case", "expected"), [
    ("bad-port", "portsentry.conf:5: TCP_PORTS: '70000' is not a port"),
    ("bad-quote", "portsentry.conf:27: SCAN_TRIGGER: missing closing quote"),
    ("bad-ignore", "portsentry.ignore.static:4: IGNORE_FILE: 'gateway.example.org' is not an address"),
    ("bad-line", "portsentry.conf:19: not a KEY=\"value\" line"),
    ("bad-mode", "default/portsentry:1: TCP_MODE: 'tcpx' is not one of"),
])
def test_broken_input_is_one_clear_error(case: str, expected: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_import(case, tmp_path)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert str(ROOTS / case) in message


def test_unquoted_value_was_skipped_by_portsentry(tmp_path: Path) -> None:
    """ConfigTokenRetrieve() skips a value without quotes; so does the import, visibly."""
    conf = 'SCAN_TRIGGER=3\nTCP_PORTS="1,2"\nUDP_PORTS="7"\n'
    imported = import_config(conf, "p.conf", 'TCP_MODE="tcp"\nUDP_MODE=""\n', "d", None, "s", None, "i",
                             str(tmp_path / "portsentry.ignore"))
    assert imported.config.scan_trigger == 0
    skipped = next(f for f in imported.report if f.key == "SCAN_TRIGGER")
    assert skipped.verdict == "dropped" and "no quotes" in skipped.why
    assert "#   SCAN_TRIGGER=3" in imported.config_text
    assert imported.config.udp_modes == ()


def test_mode_missing_from_etc_default_stays_off(tmp_path: Path) -> None:
    """The init script starts only the protocols whose mode is set."""
    conf = 'TCP_PORTS="1,2"\n'
    imported = import_config(conf, "p.conf", 'TCP_MODE="atcp"\n', "d", None, "s", None, "i",
                             str(tmp_path / "portsentry.ignore"))
    assert imported.config.tcp_modes == ("atcp",) and imported.config.udp_modes == ()
    assert 'UDP_MODE="off"' in imported.config_text
    with pytest.raises(ConfigError, match="nothing to watch"):
        import_config(conf, "p.conf", "# no modes at all\n", "d", None, "s", None, "i",
                      str(tmp_path / "portsentry.ignore"))


AGREE_CONF = """# an old, hand-edited /etc/portsentry/portsentry.conf
TCP_PORTS="1,11,15"
UDP_PORTS="1,7,9"
SCAN_TRIGGER="2"
SCAN_TRIGGER="5"
ADVANCED_PORTS_TCP=2048
ADVANCED_PORTS_TCP="4000"
ADVANCED_EXCLUDE_TCP = 113
ADVANCED_EXCLUDE_TCP="22,113"
RESOLVE_HOST=1
PORT_BANNER="first"
PORT_BANNER="second"
"""


def test_check_and_import_config_agree_on_duplicates_and_unquoted_values(tmp_path: Path) -> None:
    """Issue 12 item 13: the daemon's reader (check, run) and import-config read one file alike."""
    old = tmp_path / "portsentry"
    old.mkdir()
    conf, defaults = old / "portsentry.conf", tmp_path / "default"
    conf.write_text(AGREE_CONF)
    defaults.write_text('TCP_MODE="tcp"\nUDP_MODE=udp\n')
    checked = load_config(str(conf), [str(defaults)])
    imported = import_config(AGREE_CONF, str(conf), defaults.read_text(), str(defaults), None,
                             str(old / "portsentry.ignore.static"), None, str(old / "portsentry.ignore"),
                             str(tmp_path / "portsentry.ignore")).config
    fields = ("tcp_modes", "udp_modes", "tcp_ports", "udp_ports", "scan_trigger", "advanced_ports_tcp",
              "advanced_exclude_tcp", "resolve_host", "port_banner")
    assert {f: getattr(checked, f) for f in fields} == {f: getattr(imported, f) for f in fields}
    # first occurrence only; an unquoted first occurrence leaves the key unset (PortSentry skipped it)
    assert (checked.scan_trigger, checked.advanced_ports_tcp, checked.port_banner) == (2, 1024, "first")
    assert checked.advanced_exclude_tcp == (113, 139) and checked.resolve_host is False
    assert checked.udp_modes == ("udp",)
    warned = {w.split(": ")[0].rsplit(":", 1)[1] for w in checked.warnings if str(conf) in w}
    assert warned == {"5", "6", "7", "8", "9", "10", "12"}
