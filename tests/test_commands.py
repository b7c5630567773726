"""Every command the suite, bench/ and tools/ run is installed by tools/setup-env.

A fresh Debian machine has only the Priority ``required`` packages (not even
``important`` ones such as iputils-ping).  A run on a machine with hand-installed
tools once hid that the e2e lab needed ``ping``: 56 tests errored elsewhere.  This
test finds the commands the code runs (argument lists in Python, command words in
shell scripts), checks that the lab's and the package tests' prerequisite lists name
them, and maps each one through ``dpkg -S`` to a package that setup-env installs or
that is Priority required.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from repopaths import REPO

# Functions that take a command as an argument list (ours and subprocess's).
RUNNERS = {"run", "Popen", "check_output", "check_call", "call", "run_in", "run_victim", "run_attacker",
           "spawn", "spawn_in", "spawn_victim", "spawn_attacker", "attack", "_run"}
# Commands that run somewhere other than the test machine (inside a debootstrapped root), or
# that are this repository's own programs.
# A test that runs a program that must not exist, on purpose.
ON_PURPOSE_MISSING = {"portsentry-sensor-no-such-program"}
# Our own CLI's subcommands: unit tests hand argument lists starting with them to sensor.cli.main.
OWN_SUBCOMMANDS = set(re.findall(r'add_parser\(\s*"([a-z0-9-]+)"',
                                 "".join(p.read_text() for p in sorted((REPO / "sensor").glob("*.py")))))
COMMAND_WORD = re.compile(r"^[A-Za-z0-9_./+-]+$")
SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "!", "{", "}", "exec"}
SHELL_BUILTINS = {
    "cd", "set", "export", "echo", "printf", "exit", "return", "trap", "test", "[", "true", "false", ":",
    "local", "shift", "read", "wait", "eval", "unset", "command", "break", "continue", "umask", "type", ".",
}


def python_files() -> Iterator[Path]:
    """The Python code that runs on the test machine: tests, bench, tools/demo."""
    for top in ("tests", "bench"):
        yield from sorted((REPO / top).rglob("*.py"))
    for tool in sorted((REPO / "tools").iterdir()):
        if tool.read_text(errors="replace").startswith("#!/usr/bin/python3"):
            yield tool


def shell_files() -> Iterator[Path]:
    """The shell scripts that run on the test machine (tools/install runs in the package roots)."""
    yield REPO / ".ci" / "run"
    for tool in sorted((REPO / "tools").iterdir()):
        if tool.name != "install" and tool.read_text(errors="replace").startswith("#!/bin/sh"):
            yield tool


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def commands_in_argv(elements: list[ast.expr]) -> Iterator[str]:
    """The program of one literal argument list, looking through ``ip netns exec NS`` and setpriv."""
    words = [_literal(e) for e in elements]
    if not words or words[0] is None:
        return
    yield words[0]
    if words[:3] == ["ip", "netns", "exec"] and len(words) > 4 and words[4] is not None:
        yield words[4]


def commands_in_python(path: Path) -> Iterator[str]:
    """Commands given as literal argument lists to a runner in one Python file."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name not in RUNNERS:
            continue
        for arg in node.args:
            if isinstance(arg, ast.List | ast.Tuple):
                yield from commands_in_argv(list(arg.elts))


def commands_in_shell(path: Path) -> Iterator[str]:
    """The word in command position of every simple command in a shell script (shlex tokens)."""
    yield from _shell_commands(path.read_text().replace("\\\n", " "))


def _shell_commands(text: str) -> Iterator[str]:
    functions = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(\)", text, re.M))
    lex = shlex.shlex(text, posix=True, punctuation_chars="();<>|&\n")
    lex.whitespace = " \t\r"
    at_start, skip_to_do, redirect = True, False, False
    for token in lex:
        if redirect:  # the file a redirection names
            redirect = False
            continue
        if "$(" in token:  # a command substitution inside a word: read its inside too
            yield from _shell_commands(token.split("$(", 1)[1].rsplit(")", 1)[0])
        if skip_to_do:  # for NAME in WORDS; do
            skip_to_do = token != "do"
            at_start = not skip_to_do
            continue
        if token and set(token) <= set("();<>|&\n"):
            redirect = bool(set(token) & set("<>"))
            at_start = at_start or not redirect
            continue
        if not at_start:
            continue
        if re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):  # VAR=value before a command
            continue
        skip_to_do = token == "for"
        if token in SHELL_KEYWORDS or skip_to_do:
            continue
        at_start = False
        if _is_program(token, functions):
            yield token


def _is_program(word: str, functions: set[str]) -> bool:
    """A word in command position names a program (not a builtin, a function or a script of this tree)."""
    if word in SHELL_BUILTINS or word in functions or not COMMAND_WORD.match(word):
        return False
    return not (word.startswith("-") or "/" in word and not word.startswith("/"))


def used_commands() -> dict[str, set[str]]:
    """Command -> the files that run it."""
    found: dict[str, set[str]] = {}
    sources: Iterable[tuple[Path, Iterator[str]]] = [
        *((p, commands_in_python(p)) for p in python_files()),
        *((p, commands_in_shell(p)) for p in shell_files()),
    ]
    for path, commands in sources:
        for command in commands:
            if command in ON_PURPOSE_MISSING or command in OWN_SUBCOMMANDS or command.startswith("-"):
                continue
            found.setdefault(command, set()).add(str(path.relative_to(REPO)))
    return found


def setup_env_packages() -> set[str]:
    """The Debian packages tools/setup-env installs."""
    text = (REPO / "tools" / "setup-env").read_text()
    match = re.search(r'APT_PACKAGES="([^"]*)"', text)
    assert match, "tools/setup-env has no APT_PACKAGES=\"...\" list"
    return set(match.group(1).replace("\\\n", " ").split())


def owning_packages(commands: Iterable[str]) -> dict[str, str]:
    """Command -> the Debian package that ships it (a name on PATH or an absolute path); one dpkg call."""
    candidates: dict[str, list[str]] = {}
    for command in commands:
        path = command if command.startswith("/") else shutil.which(command)
        if path is not None:
            paths = [path, os.path.realpath(path)]
            candidates[command] = paths + [p.removeprefix("/usr") for p in paths if p.startswith("/usr/")]
    every = sorted({p for paths in candidates.values() for p in paths})
    out = subprocess.run(["dpkg-query", "-S", *every], capture_output=True, text=True, check=False).stdout
    owner = {}
    for line in out.splitlines():
        package, _, path = line.partition(": ")
        owner[path.strip()] = package.split(",")[0].split(":")[0].strip()
    return {command: next(owner[p] for p in paths if p in owner)
            for command, paths in candidates.items() if any(p in owner for p in paths)}


def priorities(packages: Iterable[str]) -> dict[str, str]:
    """Package -> its Priority field; one dpkg call."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package} ${Priority}\n", *sorted(set(packages))],
                         capture_output=True, text=True, check=False).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_the_scan_finds_what_the_lab_runs() -> None:
    """The reading of the sources is not vacuous: it finds commands we know are run."""
    found = used_commands()
    for command in ("ip", "nmap", "nft", "journalctl", "fail2ban-server", "dpkg-buildpackage", "apt-get"):
        assert command in found, f"{command} not found by the scan: {sorted(found)}"


def install_problems(installs: set[str]) -> list[str]:
    """Commands the code runs that neither ``installs`` nor a Priority required package provides."""
    used = used_commands()
    owners = owning_packages(used)
    priority = priorities(owners.values())
    problems = []
    for command, files in sorted(used.items()):
        package = owners.get(command)
        where = ", ".join(sorted(files))
        if package is None:
            problems.append(f"{command} (run by {where}) is not installed, or no package owns it")
        elif package not in installs and priority.get(package) != "required":
            problems.append(f"{command} (run by {where}) comes from {package} (Priority "
                            f"{priority.get(package, '?')}), which tools/setup-env does not install")
    return problems


def test_every_command_comes_from_setup_env_or_a_required_package() -> None:
    """dpkg -S maps each command to a package setup-env installs or one every Debian has."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    problems = install_problems(setup_env_packages())
    assert not problems, "\n".join(problems)


def test_a_package_missing_from_setup_env_is_caught() -> None:
    """The check is not vacuous: without nmap and iproute2 in setup-env's list it complains about both."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    problems = "\n".join(install_problems(setup_env_packages() - {"nmap", "iproute2"}))
    assert "nmap (run by" in problems and "comes from nmap" in problems
    assert "ip (run by" in problems and "comes from iproute2" in problems


def test_the_lab_checks_for_every_command_the_e2e_tests_run() -> None:
    """The lab's prerequisite check (lab.TOOLS) names every command the e2e tests run."""
    import sys
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    import lab
    e2e = {c for c, files in used_commands().items()
           if any(f.startswith("tests/e2e/") for f in files)}
    known = set(lab.TOOLS) | {lab.SYSTEM_PYTHON, lab.JOURNALD}
    assert e2e - known == set(), f"add these to lab.TOOLS: {sorted(e2e - known)}"


def test_the_package_tests_check_for_every_command_they_run() -> None:
    """tests/package asks ``require()`` for every command it runs on the host."""
    text = "\n".join(p.read_text() for p in sorted((REPO / "tests" / "package").glob("*.py")))
    required = {w for group in re.findall(r"require\(\[([^\]]*)\]", text) for w in re.findall(r'"([^"]+)"', group)}
    package = {c for c, files in used_commands().items()
               if any(f.startswith("tests/package/") for f in files) and not c.startswith("/")}
    assert package - required == set(), f"name these in a require([...]) of tests/package: {sorted(package - required)}"


def test_no_test_or_tool_runs_ping() -> None:
    """Reachability uses tools/icmp-echo, not iputils-ping (Priority important: absent on fresh machines)."""
    assert "ping" not in used_commands()
