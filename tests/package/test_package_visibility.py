"""What an operator sees of the installed, running sensor (issue 16) in the nspawn-booted root.

The boot is test_package_systemd.py's fixture (`booted`: a fresh Debian 12 or 13 root under
systemd, the README's Quick start run in it, the attacker in its own namespace); here, on that
root:

- the journal catalog the package installs explains a real alert of the running sensor
  (`journalctl -x`);
- the packaged unit (ProtectSystem=strict, its own user) writes its Prometheus textfile into
  its StateDirectory, and Debian's prometheus-node-exporter, installed afterwards from the
  root's cached .debs, serves those metrics on /metrics through the link the package's
  trigger puts in the exporter's textfile directory; the unit's exposure stays <= 2.0;
- purge removes the link and the state directory, and the exporter reads on without error.
"""

from __future__ import annotations

import pytest
import test_package_systemd as systemd_story
from test_package_systemd import ATTACKER_IP, VICTIM_IP, Booted, wait_for

from sensor.alert import MESSAGE_ID as ALERT_ID
from sensor.alert import START_MESSAGE_ID as START_ID

pytestmark = pytest.mark.package

# The boot fixture (module scope: this module boots its own root per suite), and the exposure
# check run again here, on the unit that now writes metrics.
booted = systemd_story.booted
test_unit_security_exposure_is_at_most_2_under_the_suites_systemd = \
    systemd_story.test_unit_security_exposure_is_at_most_2_under_the_suites_systemd

METRICS_FILE = "/var/lib/portsentry-sensor/metrics/portsentry_sensor.prom"
LINK = "/var/lib/prometheus/node-exporter/portsentry_sensor.prom"
SCRAPE = """
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9100/metrics", timeout=5).read().decode())
"""


def alert_of_attacker(booted: Booted) -> str:
    return booted.sh(f"journalctl --no-pager -o cat MESSAGE_ID={ALERT_ID} PORTSENTRY_SRC={ATTACKER_IP}",
                     check=False).stdout


def scan_once(booted: Booted) -> None:
    """One real SYN scan by the attacker, logged by the running sensor (fail2ban's ban lifted after)."""
    if not alert_of_attacker(booted):
        booted.attack("nmap", "-n", "-Pn", "-sS", "-p", "20-30", "--max-retries", "0", VICTIM_IP)
        assert wait_for(lambda: "attackalert:" in alert_of_attacker(booted), 15), \
            booted.sh("journalctl -u portsentry-sensor -n 20 --no-pager", check=False).stdout
    booted.sh(f"fail2ban-client set portsentry unbanip {ATTACKER_IP}", check=False)


def scrape(booted: Booted) -> str:
    booted.root.file("/var/tmp/pskg-scrape.py").write_text(SCRAPE)
    result = booted.sh("python3 /var/tmp/pskg-scrape.py", check=False)
    return result.stdout if result.returncode == 0 else ""


def test_quick_start_installed_the_package(booted: Booted) -> None:
    assert booted.quick_start is not None and booted.quick_start.returncode == 0, \
        booted.quick_start.stdout[-4000:] if booted.quick_start else "no quick start"


def test_journalctl_x_explains_the_running_sensors_alert(booted: Booted) -> None:
    """The catalog (compiled by systemd's dpkg trigger on install) is shown for a real alert."""
    scan_once(booted)
    listed = booted.sh(f"journalctl --list-catalog {ALERT_ID}", check=False).stdout
    assert "portsentry-sensor" in listed or "Port scan" in listed, listed
    explained = booted.sh(f"journalctl -x --no-pager MESSAGE_ID={ALERT_ID} PORTSENTRY_SRC={ATTACKER_IP} -n 1",
                          check=False).stdout
    # the catalog's text with this entry's fields filled in
    assert f"Subject: Port scan from {ATTACKER_IP}" in explained, explained
    assert f"fail2ban-client set portsentry unbanip {ATTACKER_IP}" in explained, explained
    assert "PORTSENTRY_VERIFIED=yes means the source completed a TCP handshake" in explained, explained
    # the start line has an entry of its own (the running unit's own start)
    started = booted.sh(f"journalctl -x --no-pager -u portsentry-sensor MESSAGE_ID={START_ID} -n 1",
                        check=False).stdout
    assert "Subject: portsentry-sensor started" in started and "portsentry-sensor check" in started, started


def test_the_sandboxed_unit_writes_metrics_into_its_state_directory(booted: Booted) -> None:
    scan_once(booted)

    def written() -> str:
        return booted.sh(f"cat {METRICS_FILE}", check=False).stdout
    assert wait_for(lambda: 'scan="syn"' in written(), 15), written()
    owner = booted.sh(f"stat -c '%U %a' {METRICS_FILE} {METRICS_FILE.rsplit('/', 1)[0]}").stdout.split("\n")
    assert owner[:2] == ["portsentry-sensor 644", "portsentry-sensor 755"], owner
    assert "metrics not written" not in booted.sh("journalctl -u portsentry-sensor --no-pager", check=False).stdout
    # ProtectSystem=strict: nothing else under /var/lib is writable for the sensor
    pid = booted.show("MainPID")["MainPID"]
    probe = booted.sh(f"nsenter -t {pid} -m setpriv --reuid=portsentry-sensor --regid=portsentry-sensor "
                      "--clear-groups sh -c 'touch /var/lib/portsentry-probe' 2>&1", check=False)
    assert probe.returncode != 0 and "Read-only file system" in probe.stdout, probe.stdout


def test_node_exporter_installed_later_serves_the_sensors_metrics(booted: Booted) -> None:
    """prometheus-node-exporter installed after the sensor: the package's trigger links the file in."""
    scan_once(booted)
    booted.sh("apt-get install -y -q --no-install-recommends prometheus-node-exporter", timeout=600)
    link = booted.sh(f"readlink {LINK}", check=False).stdout.strip()
    assert link == METRICS_FILE, booted.sh("ls -la /var/lib/prometheus/node-exporter", check=False).stdout
    fetched: list[str] = []

    def served() -> bool:
        fetched[:] = [scrape(booted)]
        return "portsentry_sensor_alerts_total" in fetched[0]
    assert wait_for(served, 30, step=1), fetched[0][-3000:] + booted.sh(
        "systemctl status prometheus-node-exporter --no-pager", check=False).stdout
    lines = fetched[0].splitlines()
    assert "node_textfile_scrape_error 0" in lines, [line for line in lines if "textfile" in line]
    assert any(line.startswith('portsentry_sensor_alerts_total{mode=') and 'scan="syn"' in line
               for line in lines), [line for line in lines if line.startswith("portsentry")]
    for name in ("portsentry_sensor_start_time_seconds", "portsentry_sensor_flood_suppressed_total"):
        assert any(line.startswith(name + " ") for line in lines), name


def test_purge_removes_the_link_and_the_state_directory(booted: Booted) -> None:
    """Last in this module: the package is gone afterwards."""
    booted.sh("apt-get purge -y -q portsentry-sensor", timeout=600)
    left = booted.sh(f"ls -d /var/lib/portsentry-sensor {LINK} 2>&1; ls -la /var/lib/prometheus/node-exporter",
                     check=False).stdout
    assert "portsentry" not in booted.sh("ls -A /var/lib/prometheus/node-exporter").stdout, left
    assert booted.sh("test -e /var/lib/portsentry-sensor", check=False).returncode != 0, left

    def clean() -> bool:
        text = scrape(booted)
        return "node_textfile_scrape_error 0" in text.splitlines() and "portsentry_sensor_" not in text
    assert wait_for(clean, 15, step=1), scrape(booted)[-2000:]
