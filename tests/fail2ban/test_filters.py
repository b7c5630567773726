"""Every filter of the jail pack against its annotated sample log, through fail2ban-regex.

tests/fail2ban/samples/<filter> is in fail2ban's own sample format (the one its
samplestestcase.py reads, see tests/fail2ban/f2b_harness.py): ``# filterOptions: [...]``
sections, each log line preceded by ``# failJSON: {"match": ..., "host": ..., "time": ...}``.
test_upstream_harness.py runs fail2ban's harness on the same file; here fail2ban-regex,
which exits 0 even when nothing matched (DESIGN.md section 5), so we check, line by line,
what it matched and which address it yielded, for each option set.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from f2b_harness import Sample, read_samples

from sensor.alert import Alert, format_alert

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "samples"
FILTERS = HERE.parents[1] / "fail2ban" / "filter.d"
FILTER_NAMES = sorted(p.stem for p in FILTERS.glob("*.conf"))


def option_sets(samples: list[Sample]) -> list[dict[str, str]]:
    """The distinct filter option sets of a sample file, in order of appearance."""
    found: list[dict[str, str]] = []
    for sample in samples:
        found += [o for o in sample.options if o not in found]
    return found


def checked_under(samples: list[Sample], options: dict[str, str]) -> list[Sample]:
    """The samples whose section lists this option set."""
    return [s for s in samples if options in s.options]


def run_regex(confdir: Path, logfile: Path, filter_spec: str) -> list[tuple[str, str]]:
    """fail2ban-regex over a file: the (address, line) of every match."""
    result = subprocess.run(
        ["fail2ban-regex", "-c", str(confdir), "-o", "<ip>\t<msg>", str(logfile), filter_spec],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    matches = []
    for out in result.stdout.splitlines():
        address, _, line = out.partition("\t")
        matches.append((address, line))
    return matches


def filter_spec(name: str, options: dict[str, str]) -> str:
    """``name[key=value, ...]`` as fail2ban-regex takes it."""
    if not options:
        return name
    return f"{name}[{', '.join(f'{k}={v}' for k, v in options.items())}]"


def test_every_filter_has_samples() -> None:
    """A filter without an annotated sample log is untested: fail."""
    assert FILTER_NAMES, "no filters in fail2ban/filter.d"
    for name in FILTER_NAMES:
        path = SAMPLES / name
        assert path.exists(), f"filter {name} has no sample log {path}"
        samples = read_samples(path)
        for options in option_sets(samples):
            checked = checked_under(samples, options)
            assert any(s.match for s in checked), f"{name} {options}: no sample that must match"
            assert any(not s.match for s in checked), f"{name} {options}: no sample that must not match"
            lines = [s.line for s in checked]
            assert len(lines) == len(set(lines)), f"{name} {options}: a line annotated twice"


def _cases() -> list[tuple[str, dict[str, str]]]:
    cases = []
    for name in FILTER_NAMES:
        path = SAMPLES / name
        options = option_sets(read_samples(path)) if path.exists() else []
        cases += [(name, opts) for opts in (options or [{}])]
    return cases


@pytest.mark.parametrize(("name", "options"), _cases(),
                         ids=lambda v: v if isinstance(v, str) else json.dumps(v))
def test_filter_matches_exactly_the_annotated_lines(
        f2b_confdir: Path, tmp_path: Path, name: str, options: dict[str, str]) -> None:
    """Each must-match line yields its annotated host; every other line yields nothing."""
    samples = checked_under(read_samples(SAMPLES / name), options)
    expected = {s.line: s.host for s in samples if s.match}
    logfile = tmp_path / name
    logfile.write_text("".join(s.line + "\n" for s in samples), encoding="utf-8")
    found = run_regex(f2b_confdir, logfile, filter_spec(name, options))
    got = {}
    for address, line in found:
        assert line not in got, f"matched twice: {line}"
        got[line] = address
    numbers = {s.line: s.number for s in samples}
    unexpected = {numbers.get(k, 0): v for k, v in got.items() if k not in expected}
    missed = {numbers[k]: v for k, v in expected.items() if k not in got}
    wrong = {numbers[k]: (got[k], v) for k, v in expected.items() if k in got and got[k] != v}
    # line numbers: of the failJSON annotation in the sample file
    assert not unexpected, f"lines that must not match did (line: address): {unexpected}"
    assert not missed, f"lines that must match did not (line: host): {missed}"
    assert not wrong, f"wrong address (line: (got, want)): {wrong}"


def _sensor_alerts() -> list[Alert]:
    hostile = "203.0.113.99 src=203.0.113.98 ; rm -rf / (evil)\n"
    return [
        Alert("198.51.100.40", "192.0.2.1", "tcp", 135, "syn", "atcp", False, 1),
        Alert("198.51.100.41", "192.0.2.1", "tcp", 23, "connect", "tcp", True, 1),
        Alert("2001:db8::41", "2001:db8::1", "udp", 53, "udp", "audp", False, 1),
        Alert("2001:db8::42", "2001:db8::1", "tcp", 1000, "xmas", "stcp", False, 44,
              summary=True, window=30),
        Alert("198.51.100.42", "192.0.2.1", "tcp", 80, "unknown", "atcp", False, 1, flags="FPU"),
        Alert("198.51.100.43", "192.0.2.1", "tcp", 80, "syn", "atcp", False, 1, hostname=hostile),
        Alert("198.51.100.44", "192.0.2.1", "tcp", 80, "connect", "tcp", True, 9,
              summary=True, window=30, hostname="2001:db8::66"),
    ]


@pytest.mark.parametrize("mode", ["all", "verified"])
def test_filter_matches_what_the_sensor_writes(f2b_confdir: Path, tmp_path: Path, mode: str) -> None:
    """The contract both ways: every format_alert line yields its src= (verified ones in verified mode)."""
    alerts = _sensor_alerts()
    lines = [f"Nov 21 23:59:{i:02d} victim portsentry-sensor[42]: {format_alert(a)[0]}"
             for i, a in enumerate(alerts)]
    logfile = tmp_path / "sensor.log"
    logfile.write_text("\n".join(lines) + "\n", encoding="utf-8")
    found = run_regex(f2b_confdir, logfile, filter_spec("portsentry-sensor", {"mode": mode}))
    want = [a.src for a in alerts if mode == "all" or a.verified]
    assert [address for address, _ in found] == want
