"""report and status (sensor/report.py, sensor/status.py, sensor/activity.py) on a journal file the test writes.

The journal holds what the sensor writes for an nmap SYN scan (first alert plus summary
lines, real fields from sensor.alert.format_alert), a verified IPv6 connect scan, two flood
episodes, an alert forged by a local user (same MESSAGE_ID, no trusted unit) and one
outside the period; fail2ban's database (created by fail2ban's own Fail2BanDb, so its real
schema) holds a time-limited ban at rung 2, a permanent ban and an expired one.
"""

from __future__ import annotations

import calendar
import json
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from journalfile import write_journal

from sensor import activity, fail2bandb
from sensor.alert import Alert, format_alert
from sensor.cli import main

T0 = calendar.timegm((2026, 12, 1, 10, 0, 0))  # 2026-12-01T10:00:00Z
NOW = T0 + 6 * 3600
UNIT = {"_SYSTEMD_UNIT": "portsentry-sensor.service", "_UID": "998", "SYSLOG_IDENTIFIER": "portsentry-sensor"}
SCANNER = "198.51.100.7"
FLOOD_START = ("flood: more than 20 new unverified sources in one second; until it ends single-probe sources "
               "are counted, not alerted: a source must touch more than 5 ports (and SCAN_TRIGGER) to alert, "
               "at most 20 such alerts per second; verified=yes probes are unaffected")
V6 = "2001:db8::5"


def alert(src: str, dport: int, scan: str = "syn", count: int = 1, summary: bool = False,
          verified: bool = False, proto: str = "tcp") -> dict[str, str]:
    dst = "2001:db8::1" if ":" in src else "192.0.2.10"
    message, fields = format_alert(Alert(src=src, dst=dst, proto=proto, dport=dport, scan=scan,
                                         mode="atcp" if scan != "connect" else "tcp", verified=verified,
                                         count=count, summary=summary, window=30 if summary else 0))
    return {**fields, **UNIT, "MESSAGE": message}


def admin(text: str) -> dict[str, str]:
    return {**UNIT, "MESSAGE": f"adminalert: {text}", "PRIORITY": "4"}


def entries() -> list[tuple[float, dict[str, str]]]:
    scan = T0 + 3600 + 5        # 11:00:05
    found: list[tuple[float, dict[str, str]]] = [
        (T0 - 3600, alert("192.0.2.99", 23)),                                # before the period
        (scan, alert(SCANNER, 22)),
        (scan + 0.5, alert(SCANNER, 3389, count=57, summary=True)),
        (scan + 1.0, alert(SCANNER, 8080, count=1000, summary=True)),
        (scan + 1.5, alert(SCANNER, 161, scan="udp", proto="udp")),
        (T0 + 2 * 3600 + 10, alert(V6, 23, scan="connect", verified=True)),
        (T0 + 2 * 3600 + 20, alert(V6, 25, scan="connect", verified=True)),
        # the flood guard's lines (sensor/flood.py): start, report, end; then a second flood that
        # starts a minute later and has not ended when the period does
        (T0 + 3 * 3600, admin(FLOOD_START)),
        (T0 + 3 * 3600 + 10, admin("flood continues: 5000 new unverified sources in 10 s, 4990 suppressed, "
                                   "10 alerted for scan behaviour, 0 deferred; top ports 22 (900); "
                                   "top prefixes 198.18.0.0/16 (5000)")),
        (T0 + 3 * 3600 + 40, admin("flood ended after 40 s: 9000 new unverified sources, 8990 suppressed, "
                                   "10 alerted for scan behaviour; single-probe sources alert again")),
        (T0 + 3 * 3600 + 100, admin(FLOOD_START)),
        (T0 + 4 * 3600 + 30, admin("started, watching 1000 TCP ports")),
        # a local user's forgery: same MESSAGE_ID and text, but its own _UID and no unit
        (T0 + 3 * 3600 + 5, {**alert("203.0.113.50", 22), "_SYSTEMD_UNIT": "user@1000.service", "_UID": "1000"}),
    ]
    return sorted(found, key=lambda e: e[0])


def make_db(path: Path) -> Path:
    from fail2ban.server.database import Fail2BanDb
    Fail2BanDb(str(path))   # fail2ban's own schema
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO jails(name, enabled) VALUES('portsentry', 1)")
        db.execute("INSERT INTO jails(name, enabled) VALUES('sshd', 1)")
        rows = [(SCANNER, "portsentry", NOW - 60, 3600, 2), ("203.0.113.9", "portsentry", NOW - 86400, -1, 4),
                (V6, "portsentry", NOW - 7200, 600, 1), ("192.0.2.77", "sshd", NOW - 10, 600, 1)]
        db.executemany("INSERT INTO bips(ip, jail, timeofban, bantime, bancount, data) VALUES(?,?,?,?,?,'{}')", rows)
    return path


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    monkeypatch.setattr(activity, "now", lambda: float(NOW))
    journal = write_journal(tmp_path / "alerts.journal", entries())
    db = make_db(tmp_path / "fail2ban.sqlite3")
    yield ["--file", str(journal), "--fail2ban-db", str(db)]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def report_json(world: list[str], capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code, out, err = run(["report", "--since", "2026-12-01T10:00", "--until", "2026-12-01T16:00",
                          "--format", "json", *world, *extra], capsys)
    assert (code, err) == (0, "")
    data: dict[str, Any] = json.loads(out)
    return data


def test_report_json_counts(world: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    data = report_json(world, capsys)
    assert data["schema_version"] == 1
    assert data["totals"] == {"alert_lines": 6, "scans": 4, "sources": 2,
                              "ipv4": {"sources": 1, "alerts": 4}, "ipv6": {"sources": 1, "alerts": 2},
                              "banned_now": 2, "flood_episodes": 2}
    assert [h["scans"] for h in data["hourly"]] == [0, 2, 2, 0, 0, 0]
    scanner, v6 = data["sources"]
    assert scanner["address"] == SCANNER and scanner["ports_touched"] == 1000
    assert scanner["scan_types"] == {"syn": 1, "udp": 1} and scanner["verified"] is False
    assert scanner["ports"] == ["tcp/22", "tcp/3389", "tcp/8080", "udp/161"]
    assert (scanner["first_seen"], scanner["last_seen"]) == ("2026-12-01T11:00:05Z", "2026-12-01T11:00:06Z")
    assert scanner["fail2ban"] == {"state": "banned", "rung": 2, "permanent": False,
                                   "banned_at": "2026-12-01T15:59:00Z", "ends_at": "2026-12-01T16:59:00Z"}
    assert scanner["unban"] == f"fail2ban-client set portsentry unbanip {SCANNER}"
    assert v6["verified"] is True and v6["scan_types"] == {"connect": 2}
    assert v6["fail2ban"]["state"] == "expired"
    assert data["ports"][0] == {"port": "tcp/22", "alerts": 1, "sources": 1}
    assert [(f["start"], f["end"], f["lines"], f["ended"], f["suppressed"]) for f in data["floods"]] == [
        ("2026-12-01T13:00:00Z", "2026-12-01T13:00:40Z", 3, True, 8990),
        ("2026-12-01T13:01:40Z", "2026-12-01T13:01:40Z", 1, False, None)]    # a new start line: a new episode
    bans = {b["address"]: b for b in data["fail2ban"]["bans"]}
    assert sorted(bans) == ["198.51.100.7", "203.0.113.9"]     # sshd's ban is another jail
    assert bans["203.0.113.9"] == {"address": "203.0.113.9", "rung": 4, "permanent": True,
                                   "banned_at": "2026-11-30T16:00:00Z", "ends_at": None}


def test_forged_entry_is_not_counted_unless_its_uid_is_trusted(world: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert "203.0.113.50" not in {s["address"] for s in report_json(world, capsys)["sources"]}
    forged = report_json(world, capsys, "--journalmatch", "_UID=1000")
    assert [s["address"] for s in forged["sources"]] == ["203.0.113.50"]


def test_period_limits(world: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", "--since", "2026-12-01T12:00", "--until", "2026-12-01T12:30",
                        "--format", "json", *world], capsys)
    data = json.loads(out)
    assert code == 0 and [s["address"] for s in data["sources"]] == [V6] and len(data["hourly"]) == 1


def test_text_fits_80_columns_without_colour(world: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["report", "--since", "7d", *world], capsys)
    assert code == 0 and "\033[" not in out
    chart = [line for line in out.splitlines() if re.match(r"\d\d-\d\d \d\d:\d\d \|", line)]
    assert 20 <= len(chart) <= 48 and max(len(line) for line in chart) <= 80
    assert sum(int(line.rsplit(" ", 1)[1]) for line in chart) == 5       # 5 scans in 7 days, 4-hour bars
    assert [line[-2:] for line in chart if "#" * 50 in line] == [" 3"]    # 08-12: 09:00 + 2 at 11:00
    assert "198.51.100.7" in out and "banned r2 to 12-01 16:59" in out
    assert "2 flood episodes" in out and "IPv4 2, IPv6 1" in out


def test_html_is_self_contained_with_svg_charts(world: list[str], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "report.html"
    code, out, err = run(["report", "--since", "2026-12-01T10:00", "--until", "2026-12-01T16:00",
                          "--format", "html", "-o", str(page), *world], capsys)
    assert (code, out, err) == (0, "", "")
    html = page.read_text()
    assert html.count("<svg") == 3 and "<?xml" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)   # nothing fetched
    assert "@import" not in html and "url(http" not in html
    assert "fail2ban-client set portsentry unbanip 198.51.100.7" in html
    assert "banned, rung 2" in html and "permanent" not in html.split('id="sources"')[1].split("</table>")[0]


def test_html_without_pygal_is_one_line_error(world: list[str], capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pygal", None)
    code, out, err = run(["report", "--format", "html", *world], capsys)
    assert (code, out) == (2, "")
    assert err == "portsentry-sensor report: --format html needs python3-pygal (apt install python3-pygal)\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["report", "--since", "yesterday"], "--since: 'yesterday' is not a time"),
    (["report", "--since", "1h", "--until", "2h"], "--since 1h is not before --until 2h"),
    (["report", "--journalmatch", "_COMM=portsentry-sensor"], "--journalmatch: _COMM= does not prove"),
    (["report", "--journalmatch", "_UID=abc"], "--journalmatch: '_UID=abc': _UID= takes a number"),
    (["report", "--top", "0"], "--top: must be 1 or more"),
    (["status", "198.51.100.300"], "'198.51.100.300' is not an IPv4 or IPv6 address"),
])
def test_bad_arguments_one_line_exit_2(argv: list[str], message: str, world: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*argv, *world], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err


def test_missing_journal_file_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["report", "--file", str(tmp_path / "nope.journal")], capsys)
    assert code == 2 and err == f"portsentry-sensor report: --file: {tmp_path}/nope.journal: no such journal file\n"


def test_unreadable_database_is_noted_not_fatal(world: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.sqlite3"
    broken.write_text("not a database")
    data = report_json(world[:2] + ["--fail2ban-db", str(broken)], capsys)
    assert "cannot read fail2ban's bans" in data["fail2ban"]["error"]
    assert data["sources"][0]["fail2ban"] is None and data["totals"]["sources"] == 2


def test_database_opened_read_only(world: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    db = Path(world[3])
    before = db.read_bytes()
    db.chmod(0o444)
    report_json(world, capsys)
    assert db.read_bytes() == before and not Path(f"{db}-journal").exists()


def test_default_dbfile_follows_local_override(tmp_path: Path) -> None:
    (tmp_path / "fail2ban.conf").write_text("[Definition]\ndbfile = /var/lib/fail2ban/fail2ban.sqlite3\n")
    assert fail2bandb.default_dbfile(str(tmp_path)) == "/var/lib/fail2ban/fail2ban.sqlite3"
    (tmp_path / "fail2ban.local").write_text("[Definition]\ndbfile = /srv/f2b.db\n")
    assert fail2bandb.default_dbfile(str(tmp_path)) == "/srv/f2b.db"


def sensor_config(tmp_path: Path, ignore: str) -> str:
    (tmp_path / "ignore").write_text(ignore)
    conf = tmp_path / "portsentry.conf"
    conf.write_text(f'TCP_MODE="atcp"\nUDP_MODE="audp"\nIGNORE_FILE="{tmp_path / "ignore"}"\n')
    return str(conf)


def test_status_text(world: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = sensor_config(tmp_path, "# ours\n192.0.2.0/24\n")
    code, out, err = run(["status", SCANNER, "-c", conf, *world], capsys)
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        SCANNER,
        "  alerts:   4 lines, 2 scans, first 2026-12-01T11:00:05Z, last 2026-12-01T11:00:06Z",
        "  ports:    1000 touched: tcp/22, tcp/3389, tcp/8080, udp/161",
        "  scans:    syn x1, udp x1",
        "  verified: no",
        "  ignored:  no",
        "  fail2ban: banned (rung 2) since 2026-12-01T15:59:00Z, ends 2026-12-01T16:59:00Z",
        f"  unban:    fail2ban-client set portsentry unbanip {SCANNER}",
    ]


def test_status_json_ignored_and_permanent(world: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    conf = sensor_config(tmp_path, "203.0.113.0/25\n")
    code, out, _ = run(["status", "203.0.113.9", "--format", "json", "-c", conf, *world], capsys)
    info = json.loads(out)
    assert code == 0 and info["alerts"] is None
    assert info["ignore"] == {"ignored": True, "entry": "203.0.113.0/25", "where": str(tmp_path / "ignore"),
                              "error": None}
    assert info["fail2ban"]["state"]["state"] == "permanent" and info["fail2ban"]["state"]["rung"] == 4
    loop = json.loads(run(["status", "127.0.0.5", "--format", "json", "-c", conf, *world], capsys)[1])
    assert loop["ignore"]["entry"] == "127.0.0.0/8" and loop["ignore"]["where"] == "loopback"


def test_status_ipv6_normalised_and_expired(world: list[str], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    conf = sensor_config(tmp_path, "")
    code, out, _ = run(["status", "2001:DB8:0::5", "-c", conf, *world], capsys)
    assert code == 0 and out.startswith("2001:db8::5\n")
    assert "  scans:    connect x2" in out and "verified: yes" in out
    assert "not banned now (last ban rung 1 ended 2026-12-01T14:10:00Z)" in out


def test_parallel_spans_equal_one_reader(world: list[str]) -> None:
    """report reads two halves of the period in parallel (activity.read_activity_split): the merged
    result equals one reader's, a flood episode cut by the boundary included."""
    since, until = float(T0), float(T0 + 6 * 3600 + 40 * 2)   # the boundary falls at 13:00:40
    one = activity.read_activity(activity.open_reader([world[1]], None), activity.DEFAULT_MATCH, since, until)
    two = activity.read_activity_split([world[1]], None, activity.DEFAULT_MATCH, since, until, 2)
    assert two.alert_lines == one.alert_lines == 6
    assert two.sources == one.sources and two.ports == one.ports and two.port_sources == one.port_sources
    assert (two.hourly_scans, two.hourly_alerts) == (one.hourly_scans, one.hourly_alerts)
    assert two.floods == one.floods and [f.lines for f in two.floods] == [3, 1]
