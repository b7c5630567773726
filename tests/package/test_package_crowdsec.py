"""portsentry-sensor-crowdsec on Debian 12 and 13: installs where CrowdSec loads it, and purges clean.

In a fresh debootstrapped root of each suite: Debian's crowdsec (Central API
registration opted out, as README.Debian documents for offline machines), then
portsentry-sensor and portsentry-sensor-crowdsec from the .debs this tree builds.
Every crowdsec/cscli command runs in an empty network namespace (``unshare --net``):
nothing may reach the internet, and cscli's online lookups fail fast there
(``--branch`` names the hub branch it would otherwise look up).  The pack's
behaviour (parser, scenarios, hubtest, a fleet) is tested in tests/e2e with the
same files; here the test checks that the installed files are those files.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from debroot import REPO, DebianRoot, require

pytestmark = pytest.mark.package

PKG = "portsentry-sensor-crowdsec"
PACK = REPO / "crowdsec"
INSTALLED = {  # where the package puts each file of crowdsec/
    "/etc/crowdsec/acquis.d/portsentry-sensor.yaml": "acquis.d/portsentry-sensor.yaml",
    "/etc/crowdsec/parsers/s01-parse/portsentry-sensor-logs.yaml": "parsers/s01-parse/portsentry-sensor-logs.yaml",
    "/etc/crowdsec/scenarios/portsentry-scan.yaml": "scenarios/portsentry-scan.yaml",
    "/usr/share/portsentry-sensor-crowdsec/scenarios/portsentry-scan-verified.yaml":
        "scenarios/portsentry-scan-verified.yaml",
    "/usr/share/portsentry-sensor-crowdsec/profiles/portsentry-sensor.yaml": "profiles/portsentry-sensor.yaml",
}
OFFLINE = "unshare --net"


def cscli(root: DebianRoot, args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """cscli in the root, offline, on the hub branch of Debian's crowdsec (1.4.6)."""
    return root.sh(f"{OFFLINE} cscli --branch v1.4.6 {args}", check=check, timeout=120)


@pytest.fixture(scope="module")
def crowdsec_root(debian_root: DebianRoot, deb: Path) -> Iterator[DebianRoot]:
    """crowdsec, then our two packages, installed in a fresh root of the suite."""
    require(["unshare"], root=False)
    root = debian_root
    root.sh("mkdir -p /etc/crowdsec && echo '# Central API off (offline test root)' "
            "> /etc/crowdsec/online_api_credentials.yaml")
    root.sh("apt-get install -y -qq --no-install-recommends crowdsec", timeout=600)
    pack_deb = deb.parent / deb.name.replace("portsentry-sensor_", f"{PKG}_")
    for built in (deb, pack_deb):
        (root.file("/tmp") / built.name).write_bytes(built.read_bytes())
    result = root.sh(f"apt-get install -y --no-install-recommends /tmp/{deb.name} /tmp/{pack_deb.name}",
                     timeout=600)
    assert f"Setting up {PKG}" in result.stdout, result.stdout + result.stderr
    yield root


def test_the_installed_files_are_the_pack(crowdsec_root: DebianRoot) -> None:
    for installed, source in INSTALLED.items():
        assert crowdsec_root.file(installed).read_bytes() == (PACK / source).read_bytes(), installed


def test_crowdsec_config_test_passes_with_the_pack(crowdsec_root: DebianRoot) -> None:
    result = crowdsec_root.sh(f"{OFFLINE} crowdsec -t", check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cscli_lists_our_parser_and_scenario(crowdsec_root: DebianRoot) -> None:
    parsers = json.loads(cscli(crowdsec_root, "parsers list -o json").stdout)
    scenarios = json.loads(cscli(crowdsec_root, "scenarios list -o json").stdout)
    names = [p.get("name") for p in parsers.get("parsers") or []]
    assert "portsentry-sensor/portsentry-sensor-logs" in names or "portsentry-sensor-logs.yaml" in names, names
    names = [s.get("name") for s in scenarios.get("scenarios") or []]
    assert "portsentry-sensor/portsentry-scan" in names or "portsentry-scan.yaml" in names, names


def test_purge_removes_the_pack_and_crowdsec_still_passes_its_test(crowdsec_root: DebianRoot) -> None:
    root = crowdsec_root
    root.sh(f"apt-get purge -y {PKG}", timeout=300)
    for installed in INSTALLED:
        assert not root.file(installed).exists(), installed
    assert not root.file("/usr/share/portsentry-sensor-crowdsec").exists()
    result = root.sh(f"{OFFLINE} crowdsec -t", check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    status = root.sh("dpkg-query -W -f='${Status}' portsentry-sensor").stdout
    assert status.startswith("install ok installed"), status
