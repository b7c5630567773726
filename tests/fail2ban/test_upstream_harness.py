"""Our filter and its samples pass fail2ban's own sample harness, and the harness bites.

``fail2ban-testcases``' test case ``testSampleRegexsPORTSENTRY-SENSOR`` (fail2ban's
samplestestcase.py) is what fail2ban's maintainers run on every filter; see
tests/fail2ban/f2b_harness.py for how it runs on our files without touching /etc/fail2ban
or the installed package.  Issue 17: the sample file's private "modes" key made it fail.

On Debian 13's fail2ban 1.1.0 this module runs inside a trixie root
(tests/package/test_package_pytest.py runs tests/fail2ban there).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from ci import in_ci
from f2b_harness import (
    HarnessRun,
    Sample,
    SampleError,
    package_version,
    read_samples,
    run_sample_harness,
)
from pristine import NotPristine

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "samples" / "portsentry-sensor"
FILTER = HERE.parents[1] / "fail2ban" / "filter.d" / "portsentry-sensor.conf"


def harness(work: Path, sample: Path = SAMPLE, root: Path | None = None) -> HarnessRun:
    """fail2ban's harness on our filter and the given sample file (skip if it cannot run)."""
    if root is None and shutil.which("fail2ban-testcases") is None:
        message = "fail2ban-testcases is not installed (tools/setup-env installs fail2ban)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        return run_sample_harness(work, [FILTER], sample, root=root)
    except NotPristine as exc:
        if in_ci():
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def assert_passes(run: HarnessRun) -> None:
    assert run.returncode == 0, run.output[-4000:]
    assert run.ran_one_test, f"the harness ran no test or more than one:\n{run.output[-2000:]}"


def test_fail2ban_harness_passes_our_samples(tmp_path: Path) -> None:
    """Issue 17: fail2ban-testcases' sample test for portsentry-sensor passes."""
    run = harness(tmp_path)
    assert_passes(run)
    assert run.version == package_version(), run.output[:300]


def _first(samples: list[Sample], want: Callable[[Sample], bool]) -> Sample:
    return next(s for s in samples if want(s))


def _in_mode(sample: Sample, mode: str) -> bool:
    return any(o.get("mode") == mode for o in sample.options)


def _src(sample: Sample) -> str:
    return sample.line.split(" src=", 1)[1].split(" ", 1)[0]


def _time(sample: Sample) -> str:
    return "2004-11-21T" + sample.line.split()[2]


# Each mutation: which annotated line it changes, and its new failJSON.
MUTATIONS: dict[str, tuple[Callable[[Sample], bool], Callable[[Sample], dict[str, object]]]] = {
    "other-host": (lambda s: s.match,
                   lambda s: {"match": True, "host": "198.51.100.250", "time": s.time}),
    "other-time": (lambda s: s.match,
                   lambda s: {"match": True, "host": s.host, "time": "2004-11-21T23:59:59"}),
    "match-becomes-no-match": (lambda s: s.match, lambda s: {"match": False}),
    "no-match-becomes-match": (lambda s: not s.match and "verified=yes" in s.line,
                               lambda s: {"match": True, "host": _src(s), "time": _time(s)}),
    # the mode=verified section: a spoofable verified=no alert claimed to be banned there
    "verified-mode-bans-unverified": (
        lambda s: not s.match and "verified=no" in s.line and _in_mode(s, "verified")
        and not _in_mode(s, "all"),
        lambda s: {"match": True, "host": _src(s), "time": _time(s)}),
}


def mutate(tmp_path: Path, which: str) -> tuple[Path, Sample]:
    """A temporary copy of the sample with one expectation changed, and that sample."""
    want, new = MUTATIONS[which]
    target = _first(read_samples(SAMPLE), want)
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    assert lines[target.number - 1].startswith("# failJSON:")
    lines[target.number - 1] = "# failJSON: " + json.dumps(new(target))
    copy = tmp_path / "sample" / SAMPLE.name
    copy.parent.mkdir()
    copy.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return copy, target


def assert_fails_at(run: HarnessRun, sample: Sample) -> None:
    """The harness failed on that sample line (its report quotes the line; its line
    numbers are not usable: samplestestcase.py does not count the failJSON lines)."""
    assert run.returncode != 0, f"harness passed a wrong expectation at line {sample.number}:\n{run.output}"
    assert run.ran_one_test, run.output[-2000:]
    assert f"line:\n  {sample.line}\n" in run.output, run.output[-4000:]
    modes = {o["mode"] for o in sample.options}
    assert any(f"portsentry-sensor{{'mode': '{m}'}}: " in run.output for m in modes), run.output[-4000:]


@pytest.mark.parametrize("which", sorted(MUTATIONS))
def test_fail2ban_harness_fails_when_an_expectation_changes(tmp_path: Path, which: str) -> None:
    """The harness is not vacuous: one changed expectation fails it, at that line."""
    copy, sample = mutate(tmp_path, which)
    assert_fails_at(harness(tmp_path / "work", sample=copy), sample)


def test_samples_reject_private_failjson_keys(tmp_path: Path) -> None:
    """Our reader refuses what fail2ban's harness would misread (issue 17's "modes" key)."""
    bad = tmp_path / SAMPLE.name
    bad.write_text('# filterOptions: [{"mode": "all"}]\n'
                   '# failJSON: {"match": true, "host": "198.51.100.7", "time": "2004-11-21T23:50:01",'
                   ' "modes": ["all"]}\n'
                   "Nov 21 23:50:01 victim portsentry-sensor[1]: attackalert: src=198.51.100.7\n",
                   encoding="utf-8")
    with pytest.raises(SampleError, match=r"portsentry-sensor:2: failJSON key\(s\) modes"):
        read_samples(bad)
