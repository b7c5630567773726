"""``cscli hubtest`` on the CrowdSec pack: the hub's own test runner, offline.

The pack's items are not in Debian's offline hub, so the test builds a hub the way
the CrowdSec hub repository is laid out (tests/crowdsec_hub.py), from the repository's
crowdsec/; tests/package/test_package_crowdsec.py does the same with the files the
package installed, in fresh Debian 12 and 13 roots.  hubtest then runs crowdsec on each
case's log file with a private API server on loopback, so it runs inside a namespace of
its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from crowdsec_hub import CASES, MUTATIONS, build_hub, cscli_config, hubtest_args, hubtest_passed, mutate
from lab import Lab, world_readable_dir

from crowdsec import HUB

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def hubtest(lab: Lab, where: Path, case: str) -> tuple[bool, str]:
    """Run one hubtest case; (passed, output)."""
    cscli_config(where)
    result = lab.run_in(lab.victim, hubtest_args(where, case), timeout=240, stdin=None)
    out = result.stdout + result.stderr
    return hubtest_passed(result.returncode, out), out


@pytest.fixture(scope="module")
def lab() -> Lab:
    with Lab("pscsh") as made:
        yield made


@pytest.mark.parametrize("case", CASES)
def test_hubtest_passes(lab: Lab, case: str) -> None:
    where = world_readable_dir("portsentry-hubtest-")
    try:
        build_hub(where, HUB)
        passed, out = hubtest(lab, where, case)
        assert passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("case,name,text,replacement", MUTATIONS)
def test_hubtest_fails_when_an_assertion_changes(lab: Lab, case: str, name: str, text: str,
                                                 replacement: str) -> None:
    """The assertions bite: one changed expectation fails its case."""
    where = world_readable_dir("portsentry-hubtest-")
    try:
        mutate(build_hub(where, HUB), case, name, text, replacement)
        passed, out = hubtest(lab, where, case)
        assert not passed, out[-4000:]
    finally:
        shutil.rmtree(where, ignore_errors=True)
