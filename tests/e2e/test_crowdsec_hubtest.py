"""``cscli hubtest`` on the CrowdSec pack: the hub's own test runner, offline.

The pack's items are not in Debian's offline hub, so the test builds a hub the way
the CrowdSec hub repository is laid out: a copy of /usr/share/crowdsec/hub, our
parser and scenarios added under ``portsentry-sensor/`` with their entries in
``.index.json``, and crowdsec/hubtest/ as ``.tests/`` (the test cases and the
runtime templates).  hubtest then runs crowdsec on each case's log file with a
private API server on loopback, so it runs inside a namespace of its own.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from lab import Lab, world_readable_dir

from crowdsec import HUB, PACK

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CASES = sorted(p.name for p in (PACK / "hubtest").iterdir() if p.is_dir())
ITEMS = {  # index kind -> (name, path in the hub, stage)
    "parsers": [("portsentry-sensor/portsentry-sensor-logs",
                 "parsers/s01-parse/portsentry-sensor/portsentry-sensor-logs.yaml", "s01-parse")],
    "scenarios": [(f"portsentry-sensor/{p.stem}", f"scenarios/portsentry-sensor/{p.name}", None)
                  for p in sorted((PACK / "scenarios").glob("*.yaml"))],
}
SOURCES = {"parsers/s01-parse/portsentry-sensor/portsentry-sensor-logs.yaml":
           PACK / "parsers/s01-parse/portsentry-sensor-logs.yaml",
           **{f"scenarios/portsentry-sensor/{p.name}": p for p in (PACK / "scenarios").glob("*.yaml")}}


def build_hub(where: Path) -> Path:
    """Debian's offline hub plus the pack, with ``.tests`` from crowdsec/hubtest."""
    hub = where / "hub"
    shutil.copytree(HUB, hub, symlinks=True)
    index = json.loads((hub / ".index.json").read_text())
    for kind, entries in ITEMS.items():
        for name, path, stage in entries:
            data = SOURCES[path].read_bytes()
            (hub / path).parent.mkdir(parents=True, exist_ok=True)
            (hub / path).write_bytes(data)
            entry = {"path": path, "version": "0.1", "author": "portsentry-sensor", "labels": None,
                     "description": name, "long_description": "", "content": base64.b64encode(data).decode(),
                     "versions": {"0.1": {"digest": hashlib.sha256(data).hexdigest(), "deprecated": False}}}
            if stage:
                entry["stage"] = stage
            index[kind][name] = entry
    (hub / ".index.json").write_text(json.dumps(index))
    shutil.copytree(PACK / "hubtest", hub / ".tests")
    return hub


def cscli_config(where: Path) -> Path:
    """A private config for cscli itself (hubtest needs one; never /etc/crowdsec)."""
    config = where / "cscli.yaml"
    config.write_text(json.dumps({
        "common": {"daemonize": False, "log_media": "stdout", "log_level": "info"},
        "config_paths": {"config_dir": str(where), "data_dir": str(where), "hub_dir": str(where / "hub"),
                         "index_path": str(where / "hub" / ".index.json")},
        "db_config": {"type": "sqlite", "db_path": str(where / "cscli.db")},
        "cscli": {"output": "human"}}))
    return config


def hubtest(lab: Lab, where: Path, case: str) -> tuple[bool, str]:
    """Run one hubtest case; (passed, output)."""
    args = ["cscli", "-c", str(cscli_config(where)), "--hub", str(where / "hub"), "hubtest", "run", case]
    result = lab.run_in(lab.victim, args, timeout=240, stdin=None)
    out = result.stdout + result.stderr
    return result.returncode == 0 and "failed" not in out.lower().replace("0 failed", ""), out


@pytest.fixture(scope="module")
def lab() -> Lab:
    with Lab("pscsh") as made:
        yield made


@pytest.mark.parametrize("case", CASES)
def test_hubtest_passes(lab: Lab, case: str) -> None:
    where = world_readable_dir("portsentry-hubtest-")
    try:
        build_hub(where)
        passed, out = hubtest(lab, where, case)
        assert passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)


MUTATIONS = [  # (case, file, text, replacement)
    ("portsentry-sensor-logs", "scenario.assert", '"203.0.113.9"', '"203.0.113.10"'),
    ("portsentry-sensor-logs", "parser.assert", '[3].Evt.Meta["verified"] == "yes"',
     '[3].Evt.Meta["verified"] == "no"'),
    ("portsentry-sensor-logs", "parser.assert", "[5].Success == false", "[5].Success == true"),
    ("portsentry-scan-verified", "scenario.assert", "len(results) == 1", "len(results) == 2"),
]


@pytest.mark.parametrize("case,name,text,replacement", MUTATIONS)
def test_hubtest_fails_when_an_assertion_changes(lab: Lab, case: str, name: str, text: str,
                                                 replacement: str) -> None:
    """The assertions bite: one changed expectation fails its case."""
    where = world_readable_dir("portsentry-hubtest-")
    try:
        hub = build_hub(where)
        path = hub / ".tests" / case / name
        assert text in path.read_text()
        path.write_text(path.read_text().replace(text, replacement, 1))
        passed, out = hubtest(lab, where, case)
        assert not passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)
