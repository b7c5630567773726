"""sensor/config.py: PortSentry syntax, every key, every error path."""

from __future__ import annotations

from pathlib import Path

import pytest
from repopaths import REPO, ROOTS

from sensor.config import Config, ConfigError, load_config, parse_text


def write(tmp_path: Path, text: str, name: str = "portsentry.conf") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_stock_debian_config_loads_unchanged_with_one_blocking_warning() -> None:
    stock = ROOTS / "debian-stock" / "etc"
    config = load_config(str(stock / "portsentry" / "portsentry.conf"),
                         [str(stock / "default" / "portsentry")])
    assert config.tcp_modes == ("tcp",) and config.udp_modes == ("udp",)
    assert 31337 in config.tcp_ports and 54321 in config.udp_ports
    assert config.advanced_exclude_udp == (67, 137, 138, 520)
    assert config.ignore_file == "/etc/portsentry/portsentry.ignore"
    assert config.resolve_host is False and config.scan_trigger == 0
    blocking = [w for w in config.warnings if "fail2ban does the banning" in w]
    assert len(blocking) == 1
    assert "KILL_ROUTE" in blocking[0] and "KILL_HOSTS_DENY" in blocking[0]
    assert not [w for w in config.warnings if "unknown key" in w]


def test_stock_config_without_defaults_file_uses_advanced_modes(tmp_path: Path) -> None:
    stock = ROOTS / "debian-stock" / "etc" / "portsentry" / "portsentry.conf"
    config = load_config(str(stock), [str(tmp_path / "absent")])
    assert config.tcp_modes == ("atcp",) and config.udp_modes == ("audp",)


def test_config_file_mode_wins_over_defaults_file(tmp_path: Path) -> None:
    conf = write(tmp_path, 'TCP_MODE="stcp"\nTCP_PORTS="1"\n')
    defaults = write(tmp_path, 'TCP_MODE="tcp"\nUDP_MODE="off"\n', "default")
    config = load_config(conf, [defaults])
    assert config.tcp_modes == ("stcp",) and config.udp_modes == ()


def test_shipped_default_config_is_valid() -> None:
    config = load_config(str(REPO / "etc" / "portsentry.conf"), [])
    assert config.tcp_modes == ("atcp",) and config.udp_modes == ("audp",)
    assert config.warnings == ()
    assert config.port_banner == "" and config.log_target == "auto"


@pytest.mark.parametrize(("line", "field", "value"), [
    ('TCP_MODE="tcp,atcp"\nTCP_PORTS="5"', "tcp_modes", ("tcp", "atcp")),
    ('UDP_MODE="sudp"\nUDP_PORTS="7"', "udp_modes", ("sudp",)),
    ('UDP_MODE="off"', "udp_modes", ()),
    ('TCP_PORTS="1,5-7, 9"', "tcp_ports", (1, 5, 6, 7, 9)),
    ('UDP_PORTS="53"', "udp_ports", (53,)),
    ('ADVANCED_PORTS_TCP="65535"', "advanced_ports_tcp", 65535),
    ('ADVANCED_PORTS_UDP="2048"', "advanced_ports_udp", 2048),
    ('ADVANCED_EXCLUDE_TCP="22,80"', "advanced_exclude_tcp", (22, 80)),
    ('ADVANCED_EXCLUDE_UDP=""', "advanced_exclude_udp", ()),
    ('IGNORE_FILE="/x/y"', "ignore_file", "/x/y"),
    ('SCAN_TRIGGER="3"', "scan_trigger", 3),
    ('PORT_BANNER="go away"', "port_banner", "go away"),
    ('RESOLVE_HOST="1"', "resolve_host", True),
    ('LOG_TARGET="stderr"', "log_target", "stderr"),
    ('SCAN_WINDOW="60"', "scan_window", 60),
    ('SUMMARY_INTERVAL="5"', "summary_interval", 5),
    ('SUMMARY_MAX_LINES="0"', "summary_max_lines", 0),
    ('STATE_MAX_SOURCES="100"', "state_max_sources", 100),
    ('STATE_MAX_SOURCES="65536"', "state_max_sources", 65536),
    ('FLOOD_SOURCES="0"', "flood_sources", 0),
    ('FLOOD_PORTS="9"', "flood_ports", 9),
    ('PLAN_REFRESH="1"', "plan_refresh", 1),
    ('SCAN_TRIGGER="2"  # trailing comment', "scan_trigger", 2),
])
def test_every_key(tmp_path: Path, line: str, field: str, value: object) -> None:
    config = load_config(write(tmp_path, line + "\n"), [])
    assert getattr(config, field) == value


@pytest.mark.parametrize(("text", "message"), [
    ('TCP_MODE="tcp"\nTCP_PORTS="1,70000"\n', "portsentry.conf:2: TCP_PORTS: '70000' is not a port (1-65535)"),
    ('TCP_PORTS="9-3"\n', "portsentry.conf:1: TCP_PORTS: '9-3' is not a range (low-high)"),
    ('UDP_PORTS="a"\n', "portsentry.conf:1: UDP_PORTS: 'a' is not a port (1-65535)"),
    ('TCP_MODE="bogus"\n', "portsentry.conf:1: TCP_MODE: 'bogus' is not one of tcp, stcp, atcp, off"),
    ('TCP_MODE="stcp,atcp"\nTCP_PORTS="1"\n', "portsentry.conf:1: TCP_MODE: 'stcp,atcp' combines two"),
    ('TCP_MODE="tcp,tcp"\nTCP_PORTS="1"\n', "portsentry.conf:1: TCP_MODE: 'tcp,tcp' repeats a mode"),
    ('ADVANCED_PORTS_TCP="0"\n', "portsentry.conf:1: ADVANCED_PORTS_TCP: '0' is not a whole number from 1"),
    ('SCAN_TRIGGER="-1"\n', "portsentry.conf:1: SCAN_TRIGGER: '-1' is not a whole number"),
    ('RESOLVE_HOST="yes"\n', "portsentry.conf:1: RESOLVE_HOST: 'yes' is not 0 or 1"),
    ('LOG_TARGET="file"\n', "portsentry.conf:1: LOG_TARGET: 'file' is not one of auto"),
    ('IGNORE_FILE="relative"\n', "portsentry.conf:1: IGNORE_FILE: 'relative' is not an absolute path"),
    ('STATE_MAX_SOURCES="1"\n', "portsentry.conf:1: STATE_MAX_SOURCES: '1' is not a whole number from 16"),
    # issue 12 item 10: ~9 KiB per busy source (bench/state_memory.py): 10,000,000 would be ~90 GB
    ('STATE_MAX_SOURCES="10000000"\n', "STATE_MAX_SOURCES: '10000000' is not a whole number from 16 to 65536"),
    ('STATE_MAX_SOURCES="65537"\n', "STATE_MAX_SOURCES: '65537' is not a whole number from 16 to 65536"),
    # issue 12 item 10: a NUL byte (or any control character) in a value
    ('IGNORE_FILE="/etc/x\x00y"\n', "portsentry.conf:1: IGNORE_FILE: contains a NUL byte"),
    ('PORT_BANNER="a\x1bb"\n', "portsentry.conf:1: PORT_BANNER: contains a control character ('\\x1b')"),
    ('SCAN_TRIGGER="1\x00"\n', "portsentry.conf:1: SCAN_TRIGGER: contains a NUL byte"),
    ('FLOOD_PORTS="0"\n', "portsentry.conf:1: FLOOD_PORTS: '0' is not a whole number from 1"),
    ('PORT_BANNER="' + "x" * 600 + '"\n', "portsentry.conf:1: PORT_BANNER: longer than 512"),
    ('SCAN_TRIGGER="1\n', "portsentry.conf:1: SCAN_TRIGGER: missing closing quote"),
    ('SCAN_TRIGGER="1" junk\n', "portsentry.conf:1: SCAN_TRIGGER: unexpected text after the closing quote"),
    ("\n\njust words\n", "portsentry.conf:3: not a KEY=\"value\" line"),
    ('TCP_MODE="tcp"\n', "TCP_PORTS: empty, but mode tcp needs ports"),
    ('TCP_MODE="off"\nUDP_MODE="off"\n', "portsentry.conf:1: TCP_MODE: TCP_MODE and UDP_MODE are both off"),
])
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), [])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path))


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_config(str(tmp_path / "absent.conf"), [])
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b'PORT_BANNER="caf\xe9"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(str(bad), [])


def test_unknown_and_duplicate_keys_are_warned_not_lost(tmp_path: Path) -> None:
    """Issue 12 item 13: the first occurrence wins, as in PortSentry; later ones are warned about."""
    path = write(tmp_path, 'SCAN_TRIGER="2"\nSCAN_TRIGGER="1"\nSCAN_TRIGGER="4"\n')
    config = load_config(path, [])
    assert config.scan_trigger == 1
    assert any("SCAN_TRIGER: unknown key" in w for w in config.warnings)
    assert f"{path}:3: SCAN_TRIGGER: repeated, ignored: PortSentry read only line 2" in config.warnings


def test_unquoted_values_are_skipped_and_warned_like_portsentry(tmp_path: Path) -> None:
    """Issue 12 item 13: PortSentry skipped a value without quotes; so does the sensor, loudly.

    PortSentry's ConfigTokenRetrieve() stops at the first line naming the key: without quotes the
    option is skipped, and a quoted repeat further down is never read.
    """
    path = write(tmp_path, "SCAN_TRIGGER = 2 # unquoted, spaced, commented\nSCAN_WINDOW=60\n"
                           'SCAN_WINDOW="90"\n')
    config = load_config(path, [])
    assert config.scan_trigger == 0 and config.scan_window == 300
    assert f"{path}:1: SCAN_TRIGGER: no quotes around the value: skipped, as PortSentry did " \
        '(write SCAN_TRIGGER="...")' in config.warnings
    assert any(w.startswith(f"{path}:2: SCAN_WINDOW: no quotes") for w in config.warnings)
    assert f"{path}:3: SCAN_WINDOW: repeated, ignored: PortSentry read only line 2" in config.warnings


def test_defaults_file_reads_like_the_shell_that_sourced_it(tmp_path: Path) -> None:
    """/etc/default/portsentry was sourced by the init script: unquoted words count, the last wins."""
    conf = write(tmp_path, 'TCP_PORTS="1"\nUDP_PORTS="7"\n')
    defaults = write(tmp_path, 'TCP_MODE="atcp"\nTCP_MODE=stcp\nUDP_MODE=udp\n', "default")
    config = load_config(conf, [defaults])
    assert config.tcp_modes == ("stcp",) and config.udp_modes == ("udp",)


def test_blocking_keys_warned_once_even_if_all_set(tmp_path: Path) -> None:
    text = 'BLOCK_TCP="1"\nBLOCK_UDP="1"\nKILL_RUN_CMD="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"\n'
    config = load_config(write(tmp_path, text), [])
    assert len([w for w in config.warnings if "fail2ban" in w]) == 1


def test_parse_text_keeps_line_numbers() -> None:
    settings, warnings = parse_text('# c\n\nA="1"\n  B = "two words" \n', "f")
    assert settings["A"].line == 3 and settings["B"].value == "two words"
    assert warnings == []


def test_config_defaults_are_the_shipped_ones() -> None:
    config = Config()
    assert config.tcp_modes == ("atcp",) and config.advanced_ports_tcp == 1024


def test_nul_byte_in_a_value_is_one_line_exit_2_for_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 12 item 10: exit 1 with a traceback put the unit into a Restart=on-failure loop."""
    from sensor.cli import main
    path = write(tmp_path, 'IGNORE_FILE="/etc/portsentry-sensor/x\x00y"\nLOG_TARGET="stderr"\n')
    assert main(["check", "--config", path, "--defaults", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"portsentry-sensor: {path}:1: IGNORE_FILE: contains a NUL byte"]
