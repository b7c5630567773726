"""The package's shape: the daemon loads no migration tool, and sensor/ imports form no cycle.

Modules are found by globbing sensor/**/*.py, so moves and new subpackages need no change here.
Every import counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from repopaths import REPO


def module_name(root: Path, path: Path) -> str:
    """sensor/migration/commands.py -> sensor.migration.commands; a package's __init__ -> its name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (found under ``root``)."""
    files = {module_name(root, path): path for path in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_package else name.split(".")[:-1]
                    here = here[:len(here) - node.level + 1]
                    base = ".".join([*here, base] if base else here)
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
        graph[name] = {target for target in found if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as a path (first == last), or [] if there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return []


def test_the_sensor_package_has_no_import_cycle() -> None:
    graph = import_graph(REPO, "sensor")
    assert "sensor.migration.banplan" in graph["sensor.migration.commands"]  # the walk sees the imports
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The check above could fail: a two-module loop through a subpackage is found."""
    (tmp_path / "pkg/sub").mkdir(parents=True)
    (tmp_path / "pkg/__init__.py").write_text("")
    (tmp_path / "pkg/sub/__init__.py").write_text("")
    (tmp_path / "pkg/a.py").write_text("def f():\n    from pkg.sub import b\n")
    (tmp_path / "pkg/sub/b.py").write_text("from .. import a\n")
    (tmp_path / "pkg/c.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.c"] == {"pkg.a"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def migration_modules_after(code: str) -> list[str]:
    """The sensor.migration modules in sys.modules after a fresh interpreter runs ``code``."""
    probe = (f"import sys\n{code}\n"
             "print(*sorted(m for m in sys.modules if m == 'sensor.migration' or m.startswith('sensor.migration.')))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_daemon_imports_no_migration_module() -> None:
    assert migration_modules_after("import sensor.daemon") == []


def test_portsentry_sensor_run_loads_no_migration_module() -> None:
    """The daemon's own command line (``portsentry-sensor run``, as the unit starts it) loads only the daemon."""
    assert migration_modules_after("import sensor.daemon\n"
                                   "sensor.daemon.run = lambda *args, **kwargs: 0\n"
                                   "from sensor.cli import main\n"
                                   "assert main(['run', '--stderr']) == 0") == []


def test_the_migration_commands_do_import_the_migration_package() -> None:
    """The checks above could fail: the same probe sees the package when it is loaded."""
    assert "sensor.migration.banplan" in migration_modules_after("import sensor.migration.commands")
