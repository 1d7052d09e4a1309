"""The shape the code keeps: modules a reader can take in at one sitting, classes with one role, and a core
whose modules import in layers, without cycles (module-level or inside functions).

What is over a size limit today is listed below, each entry to be removed by the change that brings it
under: the lists fail both ways, so an entry that no longer applies cannot stay (and nothing new can join
silently).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = [ROOT / "core", ROOT / "adapters",
                *(p / p.name.replace("-", "_") for p in sorted((ROOT / "plugins").iterdir()) if p.is_dir())]
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
MAX_CLASS_METHODS = 30

# Over a limit today: nothing (an entry here must name why it cannot be split yet).
MODULES_OVER: set[str] = set()
CLASSES_OVER: set[str] = set()


def _sources():
    for root in SOURCE_ROOTS:
        yield from sorted(root.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_modules_stay_under_the_line_limit():
    over = {_rel(p) for p in _sources() if p.read_text().count("\n") > MAX_MODULE_LINES}
    assert over - MODULES_OVER == set(), f"modules over {MAX_MODULE_LINES} lines: split them along a seam"
    assert MODULES_OVER - over == set(), "under the limit now: remove them from MODULES_OVER"


def test_classes_stay_under_the_size_limits():
    over = set()
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                methods = sum(isinstance(b, (ast.FunctionDef, ast.AsyncFunctionDef)) for b in node.body)
                if lines > MAX_CLASS_LINES or methods > MAX_CLASS_METHODS:
                    over.add(f"{_rel(path)}::{node.name}")
    assert over - CLASSES_OVER == set(), \
        f"classes over {MAX_CLASS_LINES} lines or {MAX_CLASS_METHODS} methods: give each part one role"
    assert CLASSES_OVER - over == set(), "under the limits now: remove them from CLASSES_OVER"


def _package_modules(folder: Path, package: str) -> dict[str, Path]:
    modules = {}
    for path in folder.rglob("*.py"):
        parts = list(path.relative_to(folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join([package, *parts])] = path
    return modules


def _core_modules() -> dict[str, Path]:
    return _package_modules(ROOT / "core", "anyray")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:  # a submodule imported by name depends on it, not on its package
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def _modules_in_cycles(graph: dict[str, set[str]]) -> set[str]:
    index, low, stack, on_stack, in_cycles = {}, {}, [], set(), set()

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                in_cycles.update(component)

    for v in graph:
        if v not in index:
            visit(v)
    return in_cycles


def test_core_imports_in_layers():
    modules = _core_modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _modules_in_cycles(graph) == set(), "these core modules import each other in a cycle: import in layers"


def test_the_cluster_adapter_imports_in_layers():
    modules = _package_modules(ROOT / "adapters" / "cluster", "anyray.adapters.cluster")
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _modules_in_cycles(graph) == set(), \
        "these modules of adapters/cluster import each other in a cycle: import in layers"


@pytest.mark.parametrize("graph, cyclic", [
    ({"a": {"b"}, "b": {"c"}, "c": set()}, set()),
    ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, {"a", "b"}),
])
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert _modules_in_cycles(graph) == cyclic


def test_one_task_path_passes_through_at_most_twelve_files_each_once():
    """One task on the multiprocess backend, from ``f.remote`` to ``get``, traced in every process it
    touches (benchmarks/trace_path.py): at most 12 files hand it on, and none is entered again from
    below (no part calls back up into a part that called it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trace_path", ROOT / "benchmarks" / "trace_path.py")
    trace_path = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_path)
    path = trace_path.analyse(*trace_path.run("multiprocess"))
    assert "core/executor.py" in path["through"] and "adapters/node/worker_main.py" in path["through"], path
    assert len(path["through"]) <= 12, path["through"]
    assert path["up_calls"] == {}, path["up_calls"]
