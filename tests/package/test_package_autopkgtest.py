"""packaging/debian/tests (autopkgtest, DEP-8): well-formed, and passing under autopkgtest itself.

Issue 10 part 4.  A Debian maintainer's CI runs ``autopkgtest`` on the
package; here it runs inside each suite's fresh root (debootstrap, from the
cache, which holds the autopkgtest .deb and our Depends): ``autopkgtest
--no-built-binaries <tree with debian/> <our .deb> -- null``, the null
testbed being the root itself (it has nothing else to break).  autopkgtest
installs the .deb with apt and runs packaging/debian/tests/smoke.  The
testbed has no network (``unshare --net``): apt takes our Depends from the
root's cached .debs, and autopkgtest's closing ``apt-get update`` only warns.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from debroot import REPO, DebianRoot

pytestmark = pytest.mark.package

TESTS = REPO / "packaging" / "debian" / "tests"
# Fields and restrictions of the DEP-8 specification (autopkgtest's doc/README.package-tests.rst).
FIELDS = {"Tests", "Test-Command", "Restrictions", "Features", "Depends", "Tests-Directory",
          "Classes", "Architecture"}
RESTRICTIONS = {"allow-stderr", "breaks-testbed", "build-needed", "flaky", "hint-testsuite-triggers",
                "isolation-container", "isolation-machine", "needs-internet", "needs-reboot",
                "needs-recommends", "needs-root", "needs-sudo", "rw-build-tree", "skip-foreign-architecture",
                "skip-not-installable", "skippable", "superficial"}


def paragraphs(text: str) -> list[dict[str, str]]:
    """deb822 paragraphs (comments dropped, continuation lines joined)."""
    found: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                found.append(current)
            current, key = {}, ""
        elif line[0] in " \t":
            assert key, f"tests/control:{number}: continuation line without a field"
            current[key] += " " + line.strip()
        else:
            match = re.match(r"^([A-Za-z][A-Za-z0-9-]*):(.*)$", line)
            assert match, f"tests/control:{number}: not 'Field: value': {line!r}"
            key = match.group(1)
            assert key not in current, f"tests/control:{number}: {key} given twice"
            current[key] = match.group(2).strip()
    if current:
        found.append(current)
    return found


def test_autopkgtest_control_is_well_formed() -> None:
    stanzas = paragraphs((TESTS / "control").read_text())
    assert stanzas, "packaging/debian/tests/control has no test"
    names = []
    for stanza in stanzas:
        assert set(stanza) <= FIELDS, set(stanza) - FIELDS
        assert ("Tests" in stanza) != ("Test-Command" in stanza), stanza
        restrictions = set(re.split(r"[\s,]+", stanza.get("Restrictions", ""))) - {""}
        assert restrictions <= RESTRICTIONS, restrictions - RESTRICTIONS
        for name in stanza.get("Tests", "").replace(",", " ").split():
            script = TESTS / name
            assert script.is_file() and os.access(script, os.X_OK), f"{script} missing or not executable"
            names.append(name)
    assert "smoke" in names


def test_smoke_script_stops_at_a_failure_and_checks_what_control_promises() -> None:
    """The script stops at the first failure and asserts what the control file promises."""
    text = (TESTS / "smoke").read_text()
    assert text.startswith("#!/bin/sh\n") and "\nset -eu\n" in text
    for promise in ("dpkg-query -W", "portsentry-sensor check", "fail2ban-client -c", " -d "):
        assert promise in text, promise


def test_autopkgtest_runs_the_smoke_test_on_the_installed_package(debian_root: DebianRoot, deb: Path) -> None:
    root = debian_root
    root.sh("apt-get install -y -qq --no-install-recommends autopkgtest", timeout=600)
    # An unbuilt source tree is all autopkgtest needs besides the .deb: debian/ with tests/.
    tree = root.file("/tmp/apt-src/portsentry-sensor")
    shutil.copytree(REPO / "packaging" / "debian", tree / "debian", symlinks=True)
    shutil.copy(deb, root.file("/tmp") / deb.name)
    result = root.sh(f"unshare --net autopkgtest --no-built-binaries --output-dir=/tmp/apt-out "
                     f"/tmp/apt-src/portsentry-sensor/ /tmp/{deb.name} -- null 2>&1",
                     timeout=600, check=False)
    summary = root.file("/tmp/apt-out/summary")
    assert summary.exists(), result.stdout[-4000:]
    assert re.search(r"^smoke\s+PASS", summary.read_text(), re.M), summary.read_text() + result.stdout[-4000:]
    # 8: "all non-superficial tests were skipped" -- smoke is the only test, and superficial.
    assert result.returncode in (0, 8), result.stdout[-4000:]
    log = root.file("/tmp/apt-out/log").read_text()
    assert "loads the jail [portsentry]" in log, log[-4000:]
