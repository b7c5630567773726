"""portsentry-sensor-crowdsec on Debian 12 and 13: installs where CrowdSec loads it, and purges clean.

In a fresh debootstrapped root of each suite: Debian's crowdsec (Central API
registration opted out, as README.Debian documents for offline machines), then
portsentry-sensor and portsentry-sensor-crowdsec from the .debs this tree builds.
Every crowdsec/cscli command runs in an empty network namespace (``unshare --net``):
nothing may reach the internet, and cscli's online lookups fail fast there
(``--branch`` names the hub branch it would otherwise look up).

``cscli hubtest`` runs inside the root on the files the package installed (a hub
built from the root's own Debian hub plus those files, tests/crowdsec_hub.py), in a
network namespace with only loopback (hubtest starts a private API server on
127.0.0.1), under the suite's crowdsec; each mutated assertion must make it fail.
The fleet (two servers, bouncers) runs on the host (tests/e2e/test_crowdsec.py) and
in a trixie root (test_package_crowdsec_fleet.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from crowdsec_hub import CASES, ITEMS, MUTATIONS, build_hub, cscli_config, hubtest_args, hubtest_passed, mutate
from debroot import REPO, DebianRoot, require, run

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
HUBTEST_NETNS = "psP-cshub"  # loopback only: hubtest's private API server listens on 127.0.0.1


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


@pytest.fixture(scope="module")
def hubtest_netns(crowdsec_root: DebianRoot) -> Iterator[str]:
    """A network namespace with only loopback up, for hubtest in the root."""
    require(["ip"])
    subprocess.run(["ip", "netns", "del", HUBTEST_NETNS], capture_output=True, check=False)
    run(["ip", "netns", "add", HUBTEST_NETNS])
    try:
        run(["ip", "-n", HUBTEST_NETNS, "link", "set", "lo", "up"])
        yield HUBTEST_NETNS
    finally:
        subprocess.run(["ip", "netns", "del", HUBTEST_NETNS], capture_output=True, check=False)


def installed_hub(root: DebianRoot, name: str) -> tuple[Path, Path]:
    """A hub in the root's /tmp/<name>: the root's Debian hub plus the files the package installed.

    Returns (host path, path inside the root).
    """
    inside = Path("/tmp") / name
    where = root.file(str(inside))
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir()
    item_file = {source: root.file(installed) for installed, source in INSTALLED.items()}
    assert {item[-1] for item in ITEMS} <= set(item_file), "a hub item the package does not install"
    build_hub(where, root.file("/usr/share/crowdsec/hub"), item_file)
    cscli_config(where, seen_as=inside)
    return where, inside


def root_hubtest(root: DebianRoot, netns: str, inside: Path, case: str) -> tuple[bool, str]:
    """``cscli hubtest run CASE`` chrooted in the root, in ``netns``; (passed, output)."""
    result = run(["ip", "netns", "exec", netns, "chroot", str(root.path), *hubtest_args(inside, case)],
                 check=False, timeout=300)
    out = result.stdout + result.stderr
    return hubtest_passed(result.returncode, out), out


@pytest.mark.parametrize("case", CASES)
def test_hubtest_passes_on_the_installed_files(crowdsec_root: DebianRoot, hubtest_netns: str, case: str) -> None:
    where, inside = installed_hub(crowdsec_root, f"hubtest-{case}")
    try:
        passed, out = root_hubtest(crowdsec_root, hubtest_netns, inside, case)
        assert passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("case,name,text,replacement", MUTATIONS)
def test_hubtest_in_the_root_fails_when_an_assertion_changes(crowdsec_root: DebianRoot, hubtest_netns: str,
                                                             case: str, name: str, text: str,
                                                             replacement: str) -> None:
    """The same hubtest bites in the root: one changed expectation fails its case."""
    where, inside = installed_hub(crowdsec_root, f"hubtest-mutated-{case}")
    try:
        mutate(where / "hub", case, name, text, replacement)
        passed, out = root_hubtest(crowdsec_root, hubtest_netns, inside, case)
        assert not passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)


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
