"""sensor/alert.py: the MESSAGE text and journald fields (the fail2ban contract)."""

from __future__ import annotations

import re

import pytest

from sensor.alert import MESSAGE_ID, Alert, format_admin, format_alert


def alert(**kw: object) -> Alert:
    base: dict[str, object] = dict(src="198.51.100.7", dst="192.0.2.10", proto="tcp", dport=135,
                                   scan="syn", mode="atcp", verified=False, count=1)
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_design_example_exactly() -> None:
    message, _ = format_alert(alert())
    assert message == ("attackalert: src=198.51.100.7 dst=192.0.2.10 proto=tcp dport=135 scan=syn "
                       "mode=atcp verified=no count=1 TCP SYN scan from host 198.51.100.7 to TCP port 135")


def test_fields() -> None:
    _, fields = format_alert(alert(src="2001:db8::2", dst="2001:db8::1", scan="connect", mode="tcp",
                                   verified=True, count=3))
    assert fields["MESSAGE_ID"] == MESSAGE_ID and re.fullmatch(r"[0-9a-f]{32}", MESSAGE_ID)
    assert fields["PORTSENTRY_SRC"] == "2001:db8::2" and fields["PORTSENTRY_DST"] == "2001:db8::1"
    assert fields["PORTSENTRY_VERIFIED"] == "yes" and fields["PORTSENTRY_COUNT"] == "3"
    assert fields["PORTSENTRY_SCAN"] == "connect" and fields["PORTSENTRY_MODE"] == "tcp"
    assert fields["PORTSENTRY_PROTO"] == "tcp" and fields["PORTSENTRY_DPORT"] == "135"
    assert fields["SYSLOG_IDENTIFIER"] == "portsentry-sensor" and fields["PRIORITY"] == "5"
    assert "PORTSENTRY_SUMMARY" not in fields


def test_summary_line() -> None:
    message, fields = format_alert(alert(count=57, summary=True, window=30, proto="udp", scan="udp"))
    assert message.startswith("attackalert: src=198.51.100.7 dst=192.0.2.10 proto=udp dport=135 scan=udp ")
    assert "count=57 UDP scan from host 198.51.100.7 continues: 57 UDP ports in the last 30 s" in message
    assert fields["PORTSENTRY_SUMMARY"] == "1"


def test_unknown_flags_are_listed() -> None:
    message, _ = format_alert(alert(scan="unknown", flags="FIN,URG"))
    assert "TCP unknown-flags (FIN,URG) scan" in message


@pytest.mark.parametrize("name", ["evil src=203.0.113.5 ", "a\nattackalert: src=203.0.113.5", "x;$(id)"])
def test_hostname_is_last_and_inert(name: str) -> None:
    message, _ = format_alert(alert(hostname=name))
    assert message.count("src=") == 1 and "\n" not in message and " " not in message.split(" host=")[1]
    assert message.split(" host=")[1].replace("_", "").replace(".", "").replace("-", "").isalnum()


@pytest.mark.parametrize("bad", [dict(src="x"), dict(dst="1.2.3"), dict(proto="icmp"), dict(scan="ping"),
                                 dict(dport=70000), dict(dport=65536), dict(dport=-1), dict(count=0),
                                 dict(mode="a b")])
def test_invalid_records_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        format_alert(alert(**bad))


def test_admin_lines_never_say_attackalert() -> None:
    assert format_admin("started").startswith("adminalert: ")


@pytest.mark.parametrize("edge", [dict(dport=0), dict(dport=65535), dict(count=1)])
def test_records_at_the_edges_are_accepted(edge: dict[str, object]) -> None:
    message, fields = format_alert(alert(**edge))
    assert all(f"{key}={value}" in message and fields[f"PORTSENTRY_{key.upper()}"] == str(value)
               for key, value in edge.items())


def test_priorities_and_facility_are_syslogs_numbers() -> None:
    import syslog

    from sensor.alert import FACILITY_DAEMON, PRIORITY_ERR, PRIORITY_NOTICE, PRIORITY_WARNING
    assert (PRIORITY_NOTICE, PRIORITY_WARNING, PRIORITY_ERR) == (syslog.LOG_NOTICE, syslog.LOG_WARNING,
                                                                 syslog.LOG_ERR)
    assert FACILITY_DAEMON == syslog.LOG_DAEMON >> 3
    assert format_alert(alert())[1]["SYSLOG_FACILITY"] == str(syslog.LOG_DAEMON >> 3)


def test_a_hostname_is_cut_at_253_characters() -> None:
    """253: the longest DNS name; anything longer is not a name we looked up."""
    message, _ = format_alert(alert(hostname="a" * 300))
    assert message.endswith(" host=" + "a" * 253)
