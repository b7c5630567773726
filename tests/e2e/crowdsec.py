"""CrowdSec hosts for the e2e lab: Debian's crowdsec and crowdsec-firewall-bouncer, private everything.

Each :class:`CrowdSecHost` lives in one lab namespace with its own config dir,
data dir, database, credentials and logs under a work directory; nothing reads
or writes /etc/crowdsec or /var/lib/crowdsec.  The Central API is never
configured (no online_client), so nothing tries to reach the internet.  Items
come from Debian's offline hub (/usr/share/crowdsec/hub: the syslog-logs parser)
and from this repository's crowdsec/ pack.  The grok patterns are Debian's
/etc/crowdsec/patterns as the package ships them (tests/pristine.py).

- the LAPI host runs ``crowdsec`` with its API server on ``http://ADDR:8080``;
- an agent-only host runs ``crowdsec -no-api`` and reports to that LAPI;
- a bouncer is ``crowdsec-firewall-bouncer`` in nftables mode inside its host's
  namespace, polling the LAPI every second (its rules stay in that namespace).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import REPO_ROOT, SYSTEM_PYTHON, VICTIM4, Lab, SensorProcess, kill_pid, wait_until, world_readable_dir
from pristine import copy_package_files

PACK = REPO_ROOT / "crowdsec"
HUB = Path("/usr/share/crowdsec/hub")
PLUGINS = Path("/usr/lib/crowdsec/plugins")
PORT = 8080


class CrowdSecHost:
    """One host's CrowdSec agent (and LAPI, if ``lapi`` is None) in namespace ``ns``."""

    def __init__(self, lab: Lab, ns: str, workdir: Path, address: str, journal_filter: list[str],
                 lapi: CrowdSecHost | None = None, profiles: str | None = None,
                 scenario: str = "portsentry-scan.yaml") -> None:
        self.lab, self.ns, self.address = lab, ns, address
        self.lapi = lapi
        self.dir = workdir
        self.etc, self.data, self.log = workdir / "etc", workdir / "data", workdir / "log"
        self.config = self.etc / "config.yaml"
        self.procs: list[subprocess.Popen[Any]] = []
        self._write(journal_filter, profiles, scenario)

    @property
    def url(self) -> str:
        """The LAPI this host talks to."""
        server = self.lapi or self
        return f"http://{server.address}:{PORT}/"

    # -- configuration ----------------------------------------------------
    def _write(self, journal_filter: list[str], profiles: str | None, scenario: str) -> None:
        for sub in (self.etc, self.data, self.log, self.etc / "acquis.d", self.etc / "parsers/s00-raw",
                    self.etc / "parsers/s01-parse", self.etc / "scenarios", self.etc / "postoverflows"):
            sub.mkdir(parents=True, exist_ok=True)
        copy_package_files("crowdsec", Path("/etc/crowdsec/patterns"), self.etc / "patterns")
        (self.etc / "parsers/s00-raw/syslog-logs.yaml").symlink_to(
            HUB / "parsers/s00-raw/crowdsecurity/syslog-logs.yaml")
        # Local items are plain files: CrowdSec 1.4.6 takes a symlink for a hub item and ignores it
        # unless it points into the hub (the package installs them the same way).
        shutil.copy(PACK / "parsers/s01-parse/portsentry-sensor-logs.yaml", self.etc / "parsers/s01-parse")
        shutil.copy(PACK / "scenarios" / scenario, self.etc / "scenarios")
        # The shipped acquisition, with the lab's journal match (the lab has no systemd units).
        acquis = (PACK / "acquis.d/portsentry-sensor.yaml").read_text()
        shipped = "  - _SYSTEMD_UNIT=portsentry-sensor.service\n"
        assert shipped in acquis
        (self.etc / "acquis.yaml").write_text(acquis.replace(
            shipped, "".join(f"  - {match}\n" for match in journal_filter)))
        (self.etc / "simulation.yaml").write_text("simulation: false\nexclusions: []\n")
        config: dict[str, Any] = {
            "common": {"daemonize": False, "log_media": "file", "log_level": "info",
                       "log_dir": str(self.log), "working_dir": str(self.dir)},
            "config_paths": {"config_dir": str(self.etc), "data_dir": str(self.data),
                             "simulation_path": str(self.etc / "simulation.yaml"),
                             "hub_dir": str(HUB), "index_path": str(HUB / ".index.json"),
                             "notification_dir": str(self.etc / "notifications"),
                             "plugin_dir": str(PLUGINS)},
            "crowdsec_service": {"acquisition_path": str(self.etc / "acquis.yaml"), "parser_routines": 1},
            "cscli": {"output": "json"},
            "db_config": {"type": "sqlite", "db_path": str(self.data / "crowdsec.db"), "log_level": "info"},
            "plugin_config": {"user": "nobody", "group": "nogroup"},
            "api": {"client": {"credentials_path": str(self.etc / "local_api_credentials.yaml")}},
            "prometheus": {"enabled": False},
        }
        if self.lapi is None:
            profile_text = profiles if profiles is not None else (
                (PACK / "profiles/portsentry-sensor.yaml").read_text().rstrip() + "\n---\n" + DEFAULT_PROFILE)
            (self.etc / "profiles.yaml").write_text(profile_text)
            config["api"]["server"] = {"log_level": "info", "listen_uri": f"{self.address}:{PORT}",
                                       "profiles_path": str(self.etc / "profiles.yaml"),
                                       "trusted_ips": ["127.0.0.1", "::1", f"{self.address}"]}
        self.config.write_text(json.dumps(config, indent=1))  # JSON is YAML

    # -- commands ---------------------------------------------------------
    def cscli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """cscli against this host's config, in its namespace (never the Central API)."""
        return self.lab.run_in(self.ns, ["cscli", "-c", str(self.config), *args], check=check, timeout=timeout)

    def register(self, host: CrowdSecHost) -> None:
        """Register ``host``'s agent with this LAPI (this must be the LAPI host)."""
        password = secrets.token_hex(16)
        self.cscli("machines", "add", host.ns, "--password", password, "--force",
                   "-f", str(host.etc / "local_api_credentials.yaml"), "--url", host.url)

    def add_bouncer(self, name: str) -> str:
        """A bouncer API key from this LAPI."""
        return self.cscli("bouncers", "add", name, "-o", "raw").stdout.strip()

    def check(self) -> subprocess.CompletedProcess[str]:
        """``crowdsec -t``: the configuration test."""
        args = ["crowdsec", "-c", str(self.config), "-t"] + ([] if self.lapi is None else ["-no-api"])
        return self.lab.run_in(self.ns, args, timeout=120)

    def start(self, timeout: float = 60) -> None:
        """Run crowdsec (LAPI + agent, or agent only); wait until it is up."""
        args = ["crowdsec", "-c", str(self.config)] + ([] if self.lapi is None else ["-no-api"])
        out = open(self.log / "stdout.log", "wb")  # noqa: SIM115 (kept open for the process)
        proc = self.lab.spawn_in(self.ns, args, stdout=out, stderr=out)
        self.procs.append(proc)
        ok = wait_until(lambda: "Starting processing data" in self.log_text() or proc.poll() is not None,
                        timeout, 0.5)
        if not ok or proc.poll() is not None:
            raise RuntimeError(f"crowdsec in {self.ns} did not come up:\n{self.log_text()[-3000:]}")

    def start_bouncer(self, api_key: str, timeout: float = 30) -> None:
        """crowdsec-firewall-bouncer (nftables) in this namespace, polling every second."""
        conf = self.dir / "bouncer.yaml"
        conf.write_text(json.dumps({
            "mode": "nftables", "pid_dir": str(self.dir), "update_frequency": "1s", "daemonize": False,
            "log_mode": "file", "log_dir": str(self.log), "log_level": "info",
            "api_url": self.url, "api_key": api_key, "disable_ipv6": False,
            "deny_action": "DROP", "deny_log": False, "supported_decisions_types": ["ban"],
            "nftables": {"ipv4": {"enabled": True, "set-only": False, "table": "crowdsec",
                                  "chain": "crowdsec-chain"},
                         "ipv6": {"enabled": True, "set-only": False, "table": "crowdsec6",
                                  "chain": "crowdsec6-chain"}},
            "prometheus": {"enabled": False, "listen_addr": "127.0.0.1", "listen_port": 60601},
        }, indent=1))
        out = open(self.log / "bouncer-stdout.log", "wb")  # noqa: SIM115
        self.procs.append(self.lab.spawn_in(self.ns, ["crowdsec-firewall-bouncer", "-c", str(conf)],
                                            stdout=out, stderr=out))
        if not wait_until(lambda: "crowdsec" in self.nft_tables(), timeout, 0.5):
            raise RuntimeError(f"the bouncer in {self.ns} made no table:\n{self.bouncer_log()[-3000:]}")

    # -- reading ----------------------------------------------------------
    def decisions(self) -> list[dict[str, Any]]:
        """``cscli decisions list`` (LAPI host), as JSON: a list of alerts with their decisions."""
        out = self.cscli("decisions", "list", "-o", "json").stdout.strip()
        return json.loads(out) if out and out != "null" else []

    def banned(self) -> dict[str, str]:
        """Active ban decisions: address -> duration left (LAPI host)."""
        found = {}
        for alert in self.decisions():
            for decision in alert.get("decisions") or []:
                if decision.get("type") == "ban":
                    found[decision["value"]] = decision.get("duration", "")
        return found

    def alerts(self) -> list[dict[str, Any]]:
        """``cscli alerts list`` (LAPI host), as JSON."""
        out = self.cscli("alerts", "list", "-o", "json", "-a").stdout.strip()
        return json.loads(out) if out and out != "null" else []

    def nft_tables(self) -> str:
        """The nftables tables in this namespace."""
        return self.lab.run_in(self.ns, ["nft", "list", "tables"]).stdout

    def log_text(self) -> str:
        """crowdsec's own log."""
        path = self.log / "crowdsec.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def bouncer_log(self) -> str:
        """The bouncer's log."""
        path = self.log / "crowdsec-firewall-bouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """Stop every process this host started (by PID)."""
        for proc in reversed(self.procs):
            kill_pid(proc)
        self.procs.clear()


DEFAULT_PROFILE = """\
name: default_ip_remediation
filters:
  - Alert.Remediation == true && Alert.GetScope() == "Ip"
decisions:
  - type: ban
    duration: 4h
on_success: break
"""



# --------------------------------------------------------------------------
# A two-server fleet (tests/e2e/test_crowdsec.py, bench/crowdsec_fleet.py).

HOST_B4, HOST_B6 = "192.0.2.3", "2001:db8::3"
SERVICE_PORT = 8000
FLEET_SENSOR_CONF = """\
TCP_MODE="atcp"
UDP_MODE="off"
SCAN_TRIGGER="0"
LOG_TARGET="journal"
"""
CONNECT = """
import socket, sys
s = socket.socket(); s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); sys.exit(0)
except OSError:
    sys.exit(1)
"""


@dataclass
class Fleet:
    """Host A (the lab's victim: LAPI, agent, sensor, bouncer) and host B (agent, sensor, bouncer)."""

    lab: Lab
    a: CrowdSecHost
    b: CrowdSecHost
    host_b: str
    sensor_a: SensorProcess
    sensor_b: SensorProcess

    def connects(self, ns: str, address: str = HOST_B4, port: int = SERVICE_PORT, timeout: float = 1.0) -> bool:
        """A TCP connection from ``ns`` completes within ``timeout``."""
        args = [SYSTEM_PYTHON, "-c", CONNECT, address, str(port), str(timeout)]
        return self.lab.run_in(ns, args, timeout=timeout + 10).returncode == 0


def journal_match(user: tuple[str, int, int], sensor: SensorProcess) -> list[str]:
    """What one host's acquisition trusts in the lab's shared journal: the sensor's _UID and _PID,
    both set by journald (on a real server: _SYSTEMD_UNIT=portsentry-sensor.service)."""
    return [f"_UID={user[1]}", f"_PID={sensor.pid}"]


@contextlib.contextmanager
def fleet(lab: Lab, sensor_user: tuple[str, int, int]) -> Iterator[Fleet]:
    """Start the two hosts in ``lab`` (B is a macvlan namespace ``<prefix>-b`` on the lab's link)."""
    host_b = lab.add_attacker("b", HOST_B4, HOST_B6)
    sensor_a = SensorProcess(lab, FLEET_SENSOR_CONF, user=sensor_user).start()
    sensor_b = SensorProcess(lab, FLEET_SENSOR_CONF, user=sensor_user, ns=host_b).start()
    work = world_readable_dir("portsentry-crowdsec-")
    a = CrowdSecHost(lab, lab.victim, work / "a", VICTIM4, journal_match(sensor_user, sensor_a))
    b = CrowdSecHost(lab, host_b, work / "b", HOST_B4, journal_match(sensor_user, sensor_b), lapi=a)
    try:
        lab.serve_tcp(SERVICE_PORT, ns=host_b)
        a.register(a)
        a.register(b)
        a.start()
        b.start()
        a.start_bouncer(a.add_bouncer("bouncer-a"))
        b.start_bouncer(a.add_bouncer("bouncer-b"))
        yield Fleet(lab, a, b, host_b, sensor_a, sensor_b)
    finally:
        b.stop()
        a.stop()
        sensor_b.close()
        sensor_a.close()
        shutil.rmtree(work, ignore_errors=True)
