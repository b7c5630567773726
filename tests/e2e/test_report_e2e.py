"""report and status on real parts (issue 16): lab, sensor, nmap scans, a real fail2ban ban.

The sensor runs in the victim namespace and logs to journald; fail2ban (private
server, tests/e2e/f2b.py) bans the IPv4 scanner.  Then ``portsentry-sensor report
--format json`` and ``status ADDRESS`` read the real journal (matched by the sensor's
_PID, a trusted field: other test sessions log alerts for the same documentation
addresses) and fail2ban's real database while the server runs, and must show the two
scans, the ban at rung 1 with its end, and after ``unbanip`` no ban.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from f2b import Fail2Ban
from lab import (
    ATTACKER4,
    ATTACKER6,
    REPO_ROOT,
    SYSTEM_PYTHON,
    VICTIM4,
    VICTIM6,
    Journal,
    Lab,
    SensorProcess,
    wait_until,
    world_readable_dir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WATCHED = (1, 79, 111, 143)
SENSOR_CONF = f"""\
TCP_MODE="tcp"
UDP_MODE=""
TCP_PORTS="{",".join(map(str, WATCHED))}"
SCAN_TRIGGER="0"
SCAN_WINDOW="1"
LOG_TARGET="journal"
"""


@dataclass
class Stack:
    lab: Lab
    sensor: SensorProcess
    f2b: Fail2Ban
    metrics_dir: Path


@pytest.fixture(scope="module")
def stack(journald: Journal, sensor_user: tuple[str, int, int]) -> Iterator[Stack]:
    with Lab("psrep") as lab:
        metrics_dir = world_readable_dir("portsentry-metrics-")
        os.chown(metrics_dir, sensor_user[1], sensor_user[2])
        sensor = SensorProcess(lab, f'{SENSOR_CONF}METRICS_DIR="{metrics_dir}"\n', ignore_text="203.0.113.0/24\n",
                               user=sensor_user).start()
        workdir = world_readable_dir("portsentry-f2b-")
        # bans the IPv4 scanner only (ignoreip): the IPv6 one stays unbanned for contrast
        f2b = Fail2Ban(lab, workdir, f"[portsentry]\njournalmatch = _UID={sensor_user[1]} _PID={sensor.pid}\n"
                                     f"bantime = 600\nfindtime = 600\nignoreip = 127.0.0.1/8 ::1 {ATTACKER6}\n")
        try:
            f2b.start()
            yield Stack(lab, sensor, f2b, metrics_dir)
        finally:
            f2b.stop()
            sensor.close()
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(metrics_dir, ignore_errors=True)


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """The command as the operator runs it on the sensor's host (the victim namespace: its addresses)."""
    return stack.lab.run_victim([SYSTEM_PYTHON, "-m", "sensor", *args, "--journalmatch", f"_PID={stack.sensor.pid}",
                                 "--fail2ban-db", str(stack.f2b.dbfile)], cwd=REPO_ROOT, timeout=60)


def report(stack: Stack) -> dict[str, Any]:
    result = cli(stack, "report", "--since", "30m", "--format", "json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def test_report_and_status_after_real_scans_and_ban(stack: Stack, tmp_path: Path) -> None:
    ports = ",".join(map(str, WATCHED))
    stack.lab.nmap(["-sT", "-p", ports, VICTIM4], timeout=60)
    stack.lab.nmap(["-sT", "-6", "-p", ports, VICTIM6], timeout=60)
    stack.f2b.wait_in_set(ATTACKER4, timeout=15)
    assert wait_until(lambda: report(stack)["totals"]["sources"] == 2, 10), report(stack)
    # The scan window (1 s) closes with a summary line; fail2ban must have read every
    # alert line before the unban below, or a late one bans the address again.
    time.sleep(2.5)
    assert wait_until(lambda: stack.f2b.log_text().count(f"Found {ATTACKER4}") ==
                      next(s["alerts"] for s in report(stack)["sources"] if s["address"] == ATTACKER4), 10)
    data = report(stack)
    assert data["totals"]["ipv4"]["sources"] == 1 and data["totals"]["ipv6"]["sources"] == 1
    assert data["totals"]["scans"] >= 2 and data["totals"]["banned_now"] == 1
    by_address = {s["address"]: s for s in data["sources"]}
    scanner = by_address[ATTACKER4]
    assert scanner["scan_types"].get("connect", 0) >= 1 and scanner["verified"] is True
    assert set(scanner["ports"]) <= {f"tcp/{p}" for p in WATCHED} and scanner["ports"]
    ban = scanner["fail2ban"]
    assert ban["state"] == "banned" and ban["rung"] == 1 and ban["ends_at"] is not None
    assert by_address[ATTACKER6]["fail2ban"] is None
    assert sum(h["scans"] for h in data["hourly"]) == data["totals"]["scans"]

    text = cli(stack, "report", "--since", "30m").stdout
    (tmp_path / "report.txt").write_text(text)           # README's "Watching it" example comes from here
    assert "2 sources: IPv4 1, IPv6 1; 1 banned now" in text and "banned r1 to " in text
    html = tmp_path / "report.html"
    assert cli(stack, "report", "--since", "30m", "--format", "html", "-o", str(html)).returncode == 0
    assert html.read_text().count("<svg") == 3

    status = cli(stack, "status", ATTACKER4, "-c", str(stack.sensor.conf_path))
    assert status.returncode == 0, status.stderr
    (tmp_path / "status.txt").write_text(status.stdout)
    assert "  fail2ban: banned (rung 1) since " in status.stdout
    assert f"  unban:    fail2ban-client set portsentry unbanip {ATTACKER4}" in status.stdout
    assert "  scans:    connect x" in status.stdout and "  ignored:  no\n" in status.stdout, status.stdout
    ignored = cli(stack, "status", "203.0.113.5", "-c", str(stack.sensor.conf_path)).stdout
    assert f"  ignored:  yes, by 203.0.113.0/24 ({stack.sensor.ignore_path})" in ignored

    stack.f2b.client("set", "portsentry", "unbanip", ATTACKER4)      # the printed command
    stack.f2b.wait_in_set(ATTACKER4, present=False)
    conf = str(stack.sensor.conf_path)
    assert wait_until(lambda: "  fail2ban: not banned in jail portsentry" in
                      cli(stack, "status", ATTACKER4, "-c", conf).stdout, 10), \
        cli(stack, "status", ATTACKER4, "-c", conf).stdout + stack.f2b.log_tail()
    final = report(stack)
    assert final["totals"]["banned_now"] == 0, json.dumps(final["sources"]) + stack.f2b.log_tail()


def test_metrics_pass_the_node_exporter(stack: Stack) -> None:
    """The sensor's textfile, read by Debian's prometheus-node-exporter (textfile collector only) in the
    victim namespace, listening on that namespace's loopback; /metrics fetched with curl there."""
    prom = stack.metrics_dir / "portsentry_sensor.prom"
    connect = 'portsentry_sensor_alerts_total{proto="tcp",scan="connect",mode="tcp",verified="yes"}'

    def alerts_counted() -> int:
        text = prom.read_text() if prom.exists() else ""
        return sum(int(line.split()[-1]) for line in text.splitlines() if line.startswith(connect))
    if alerts_counted() == 0:      # run alone: scan first
        stack.lab.nmap(["-sT", "-p", ",".join(map(str, WATCHED)), VICTIM4], timeout=60)
    assert wait_until(lambda: alerts_counted() >= 1, 15), prom.read_text() if prom.exists() else "no file"
    stack.lab.spawn_victim(["prometheus-node-exporter", "--collector.disable-defaults", "--collector.textfile",
                            f"--collector.textfile.directory={stack.metrics_dir}",
                            "--web.listen-address=127.0.0.1:9100"])
    fetched: list[str] = []

    def scrape() -> bool:
        result = stack.lab.run_victim(["curl", "-s", "--max-time", "3", "http://127.0.0.1:9100/metrics"])
        fetched[:] = [result.stdout]
        return result.returncode == 0 and "portsentry_sensor_" in result.stdout
    assert wait_until(scrape, 15), fetched
    lines = fetched[0].splitlines()
    assert "node_textfile_scrape_error 0" in lines
    # the exporter sorts labels by name
    assert any(line.startswith('portsentry_sensor_alerts_total{mode="tcp",proto="tcp",scan="connect",verified="yes"} ')
               for line in lines), lines
    assert "# TYPE portsentry_sensor_alerts_total counter" in lines
    assert any(line.startswith('portsentry_sensor_watched_ports{mode="tcp",proto="tcp"} 4') for line in lines), lines
    assert any(line.startswith("portsentry_sensor_start_time_seconds ") for line in lines)
    # the flood guard's counters (sensor/flood.py) pass the exporter's parser too
    assert "# TYPE portsentry_sensor_flood_suppressed_total counter" in lines
    assert any(line.startswith("portsentry_sensor_flood_suppressed_total ") for line in lines), lines
    assert any(line.startswith("portsentry_sensor_flood_active ") for line in lines), lines
