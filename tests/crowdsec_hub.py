"""A CrowdSec hub for ``cscli hubtest`` on the pack: shared by the host and the installed-root tests.

The pack's items are not in Debian's offline hub, so :func:`build_hub` lays one out the
way the CrowdSec hub repository is: a copy of Debian's hub (/usr/share/crowdsec/hub),
our parser and scenarios added under ``portsentry-sensor/`` with their entries in
``.index.json``, and crowdsec/hubtest/ as ``.tests/`` (the cases and the runtime
templates).  Where the items come from is the caller's choice: the repository's
crowdsec/ (tests/e2e/test_crowdsec_hubtest.py) or the files the package installed
in a fresh Debian root (tests/package/test_package_crowdsec.py).

Used as ``from crowdsec_hub import ...`` (tests/ is on sys.path: tests/conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

from repopaths import REPO

PACK = REPO / "crowdsec"
CASES = sorted(p.name for p in (PACK / "hubtest").iterdir() if p.is_dir())
# Hub item: (index kind, name, path in the hub, stage, file of crowdsec/)
ITEMS = [("parsers", "portsentry-sensor/portsentry-sensor-logs",
          "parsers/s01-parse/portsentry-sensor/portsentry-sensor-logs.yaml", "s01-parse",
          "parsers/s01-parse/portsentry-sensor-logs.yaml")] + [
    ("scenarios", f"portsentry-sensor/{p.stem}", f"scenarios/portsentry-sensor/{p.name}", None,
     f"scenarios/{p.name}") for p in sorted((PACK / "scenarios").glob("*.yaml"))]

MUTATIONS = [  # (case, file, text, replacement): each must make its case fail
    ("portsentry-sensor-logs", "scenario.assert", '"203.0.113.9"', '"203.0.113.10"'),
    ("portsentry-sensor-logs", "parser.assert", '[3].Evt.Meta["verified"] == "yes"',
     '[3].Evt.Meta["verified"] == "no"'),
    ("portsentry-sensor-logs", "parser.assert", "[5].Success == false", "[5].Success == true"),
    ("portsentry-scan-verified", "scenario.assert", "len(results) == 1", "len(results) == 2"),
]


def build_hub(where: Path, debian_hub: Path, item_file: dict[str, Path] | None = None) -> Path:
    """``where``/hub: ``debian_hub`` plus the pack, with ``.tests`` from crowdsec/hubtest.

    ``item_file`` maps each item's file of crowdsec/ (ITEMS' last field) to the file to
    put in the hub; by default the repository's own.
    """
    hub = where / "hub"
    shutil.copytree(debian_hub, hub, symlinks=True)
    index = json.loads((hub / ".index.json").read_text())
    for kind, name, path, stage, source in ITEMS:
        data = (item_file or {}).get(source, PACK / source).read_bytes()
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


def cscli_config(where: Path, seen_as: Path | None = None) -> Path:
    """A private config for cscli itself in ``where`` (hubtest needs one; never /etc/crowdsec).

    ``seen_as``: the path of ``where`` for the cscli that reads it (inside a chroot).
    """
    inside = seen_as or where
    config = where / "cscli.yaml"
    config.write_text(json.dumps({
        "common": {"daemonize": False, "log_media": "stdout", "log_level": "info"},
        "config_paths": {"config_dir": str(inside), "data_dir": str(inside), "hub_dir": str(inside / "hub"),
                         "index_path": str(inside / "hub" / ".index.json")},
        "db_config": {"type": "sqlite", "db_path": str(inside / "cscli.db")},
        "cscli": {"output": "human"}}))
    return config


def hubtest_args(where: Path, case: str) -> list[str]:
    """``cscli hubtest run CASE`` on the hub and config in ``where`` (as the cscli running it sees it)."""
    return ["cscli", "-c", str(where / "cscli.yaml"), "--hub", str(where / "hub"), "hubtest", "run", case]


def hubtest_passed(returncode: int, out: str) -> bool:
    """Did ``cscli hubtest run`` pass?  (Exit 0 and no failed case reported.)"""
    return returncode == 0 and "failed" not in out.lower().replace("0 failed", "")


def mutate(hub: Path, case: str, name: str, text: str, replacement: str) -> None:
    """Change one expectation of a case's assertion file (the text must be there)."""
    path = hub / ".tests" / case / name
    assert text in path.read_text(), f"{text!r} not in {path}"
    path.write_text(path.read_text().replace(text, replacement, 1))
