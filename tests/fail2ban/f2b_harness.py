"""fail2ban's own filter sample harness (samplestestcase.py), run on our filter and samples.

fail2ban's maintainers check every filter with ``fail2ban-testcases``: its test case
``testSampleRegexs<FILTER>`` reads ``filter.d/<filter>.conf`` from FAIL2BAN_CONFIG_DIR and
the sample log ``tests/files/logs/<filter>`` next to its own module.  To run it on our
files without touching /etc/fail2ban or the installed package:

- the config dir is a temporary copy of the files the fail2ban package owns under
  /etc/fail2ban (never an admin's .local or edited conffile), plus our filter;
- the harness runs from a temporary copy of the installed ``fail2ban`` Python package
  whose ``tests/files/logs`` holds only our sample: ``fail2ban-testcases`` imports
  ``./fail2ban`` when the current directory has one (its dev-tree mode), so the command
  is the packaged one, unchanged, and the harness module is fail2ban's own copy.

Everything takes an optional ``root``: a Debian root (e.g. Debian 13 made by
debootstrap) whose fail2ban runs the same harness through chroot.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from pristine import NotPristine, copy_pristine, on_host
from pristine import _query as pristine_query
from repopaths import FAIL2BAN_ETC

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
       "PYTHONDONTWRITEBYTECODE": "1"}
ETC = str(FAIL2BAN_ETC)


# samplestestcase.py's own pattern for its annotations (fail2ban 1.0.2 and 1.1.0).
ANNOTATION = re.compile(r"^#+ ?(failJSON|(?:file|filter)Options|addFILE):(.+)$")
# failJSON keys fail2ban treats specially; any other key is compared with a capture group
# of the same name, and our filter has none (a private key would fail the harness).
FAILJSON_KEYS = frozenset({"match", "host", "time", "desc"})


class SampleError(ValueError):
    """A sample file that fail2ban's harness would not read as we do."""


@dataclass
class Sample:
    """One annotated log line and the filter option sets it is checked under."""

    number: int  # line number of its failJSON annotation (what the harness reports)
    line: str
    match: bool
    host: str | None
    time: str | None
    options: list[dict[str, str]] = field(default_factory=list)


def read_samples(path: Path) -> list[Sample]:
    """Parse a sample log by fail2ban's rules (samplestestcase.py).

    ``# filterOptions: [...]`` (a dict or a list of dicts) starts a section whose lines are
    checked under each option set (before any: the filter's defaults, ``{}``);
    ``# failJSON: {...}`` annotates the next line.  Stricter than fail2ban: a log line
    without failJSON, keys other than FAILJSON_KEYS, and the annotations this project does
    not use (fileOptions, addFILE, ``test.*`` options) are errors naming file and line.
    """
    samples: list[Sample] = []
    options: list[dict[str, str]] = [{}]
    lines = path.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        text = lines[number]
        number += 1
        where = f"{path.name}:{number}"
        found = ANNOTATION.match(text)
        if found is None:
            if text.startswith("#") or not text.strip():
                continue
            raise SampleError(f"{where}: log line without a failJSON annotation")
        kind, data = found.group(1), json.loads(found.group(2))
        if kind == "filterOptions":
            options = _filter_options(where, data)
            continue
        if kind != "failJSON":
            raise SampleError(f"{where}: {kind} is not used by this project's samples")
        _check_failjson(where, data)
        if number >= len(lines):
            raise SampleError(f"{where}: failJSON without a log line after it")
        samples.append(Sample(number, lines[number], bool(data.get("match", False)), data.get("host"),
                              data.get("time"), [dict(o) for o in options]))
        number += 1
    return samples


def _filter_options(where: str, data: object) -> list[dict[str, str]]:
    options = data if isinstance(data, list) else [data]
    for opts in options:
        if not isinstance(opts, dict) or any(k.startswith("test.") for k in opts):
            raise SampleError(f"{where}: filterOptions must be option dicts, got {opts!r}")
    return options


def _check_failjson(where: str, data: dict[str, object]) -> None:
    unknown = sorted(set(data) - FAILJSON_KEYS)
    if unknown:
        raise SampleError(f"{where}: failJSON key(s) {', '.join(unknown)}: fail2ban would compare "
                          f"them with capture groups; use only {', '.join(sorted(FAILJSON_KEYS))}")
    if data.get("match") and not (data.get("host") and data.get("time")):
        raise SampleError(f"{where}: a line that must match needs its \"host\" and \"time\"")


def load_action_file(path: Path, name: str) -> ModuleType:
    """Import one of our Python actions by path, as fail2ban does, leaving no __pycache__ in the pack."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = saved
    return module


def _query(args: list[str], root: Path | None) -> str:
    return pristine_query(*args, root=root)


def pristine_config(dest: Path, root: Path | None = None) -> Path:
    """The fail2ban package's own /etc/fail2ban files in dest (tests/pristine.py)."""
    return copy_pristine(dest, root)


def package_version(root: Path | None = None) -> str:
    """The installed fail2ban package's upstream version (1.0.2 on Debian 12, 1.1.0 on 13)."""
    version = _query(["-W", "-f", "${Version}", "fail2ban"], root).strip()
    return version.split(":", 1)[-1].rsplit("-", 1)[0]


def package_dir(root: Path | None = None) -> Path:
    """Host path of the installed ``fail2ban`` Python package (from dpkg's file list)."""
    for path in _query(["-L", "fail2ban"], root).splitlines():
        if path.endswith("/fail2ban/tests/samplestestcase.py"):
            return on_host(Path(path), root).parent.parent
    raise NotPristine("the fail2ban package has no fail2ban/tests/samplestestcase.py")


def case_name(filter_name: str) -> str:
    """The harness's test method for a filter (samplestestcase.py: name upper-cased)."""
    return "testSampleRegexs" + filter_name.upper()


@dataclass
class HarnessRun:
    """One fail2ban-testcases run: exit status and everything it printed."""

    returncode: int
    output: str
    sample: Path

    @property
    def version(self) -> str | None:
        """The fail2ban version that ran (from fail2ban's test-suite banner)."""
        found = re.search(r"^Fail2ban (\S+) test suite", self.output, re.MULTILINE)
        return found.group(1) if found else None

    @property
    def ran_one_test(self) -> bool:
        """unittest's summary says exactly one test ran (a selector matching nothing runs 0)."""
        return "\nRan 1 test in " in self.output


def run_sample_harness(work: Path, filters: list[Path], sample: Path, root: Path | None = None,
                       timeout: float = 300) -> HarnessRun:
    """Run fail2ban's sample test case for the filter of ``sample`` (its file name).

    work: an empty directory (inside ``root`` when root is given) that receives the
    config dir and the copy of the fail2ban package.  filters: our filter.d/*.conf.
    """
    name = sample.name
    config = pristine_config(work / "config", root)
    for conf in filters:
        shutil.copy(conf, config / "filter.d" / conf.name)
    tree = work / "tree"
    logs = Path("tests") / "files" / "logs"

    def skip(directory: str, names: list[str]) -> set[str]:
        ignored = {n for n in names if n == "__pycache__"}
        if Path(directory).as_posix().endswith(logs.as_posix()):
            ignored |= set(names)  # fail2ban's own samples: only ours is tested
        return ignored

    shutil.copytree(package_dir(root), tree / "fail2ban", ignore=skip, symlinks=True)
    copied = tree / "fail2ban" / logs / name
    shutil.copy(sample, copied)
    selector = f"^{case_name(name)} "
    if root is None:
        inside = {"config": config, "tree": tree}
        prefix: list[str] = []
    else:
        inside = {k: Path("/") / v.relative_to(root) for k, v in (("config", config), ("tree", tree))}
        prefix = ["chroot", str(root)]
    command = [*prefix, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in ENV.items()),
               f"FAIL2BAN_CONFIG_DIR={inside['config']}", "/bin/sh", "-c",
               f'cd "{inside["tree"]}" && exec fail2ban-testcases -n -f "$0"', selector]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                            env=ENV)
    return HarnessRun(result.returncode, result.stdout + result.stderr, copied)


CONTRACT = Path(__file__).resolve().parent / "f2b_action_contract.py"


def run_action_contract(work: Path, action: Path, root: Path | None = None,
                        timeout: float = 120) -> HarnessRun:
    """Run f2b_action_contract.py (fail2ban's action test utilities) on a Python action.

    work: an empty directory (inside ``root`` when given) for copies of both files; the
    system python3 of the host or of ``root`` runs it, with that fail2ban.
    """
    work.mkdir(parents=True, exist_ok=True)
    script, copied = work / CONTRACT.name, work / action.name
    shutil.copy(CONTRACT, script)
    shutil.copy(action, copied)
    if root is None:
        prefix: list[str] = []
        paths = [script, copied]
    else:
        prefix = ["chroot", str(root)]
        paths = [Path("/") / p.relative_to(root) for p in (script, copied)]
    command = [*prefix, "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in ENV.items()), "/bin/sh", "-c",
               'cd "$(dirname "$0")" && exec /usr/bin/python3 "$0" "$1"', *map(str, paths)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=ENV)
    return HarnessRun(result.returncode, result.stdout + result.stderr, copied)
