"""``anyray.backend_kit`` is the one module of anyray a backend plugin imports, and it is what the README documents.

- The Ray and Dask plugins (their packages and their tests) import only
  ``anyray``, ``anyray.backend_kit[.submodule]`` and ``anyray.exceptions``,
  and take no private name (``_x``) from any of them.
- The kit's ``__all__`` is exactly the documented surface, and every name
  in it resolves.
- The kit is core: it never imports ``anyray.adapters``, and importing it
  loads no pluggy (the built-in backends' worker processes import it).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import anyray.backend_kit as kit

ROOT = pathlib.Path(__file__).resolve().parent.parent
PLUGIN_FILES = sorted(p for pattern in ("plugins/*/anyray_*/**/*.py", "plugins/*/tests/**/*.py", "plugins/*/tools/*.py")
                      for p in ROOT.glob(pattern))
# anyray.util is public API (Ray's ray.util), as anyray and anyray.exceptions are.
ALLOWED = ("anyray", "anyray.exceptions", "anyray.backend_kit", "anyray.util", "anyray.util.metrics",
           "anyray.util.placement_group", "anyray.util.scheduling_strategies")

# What the README's "Writing a backend" section documents, group by group.
DOCUMENTED = {
    # ports
    "Backend", "BackendConfig", "Capability", "EventSink", "Scheduler", "TaskPort", "ActorPort", "ClusterInfoPort",
    "ObjectStore", "MetadataStore", "Watch", "PlacementGroupPort", "PlacementGroupSpec", "StatePort",
    # specs
    "TaskSpec", "ActorSpec", "ActorTaskSpec", "FunctionDescriptor", "RemoteFailure",
    # placement groups
    "PlacementGroup", "PlacementGroupID", "PlacementGroupSchedulingStrategy", "NodeAffinitySchedulingStrategy",
    # values
    "ObjectRef", "ActorHandle", "SerializedObject", "serialize", "deserialize", "note_ref_pickled",
    "portable_classes",
    # running tasks and actors
    "Call", "serialize_failure", "failure_for", "run_in_place", "TaskContext", "ActorInfo", "exit_is_intended",
    "ActorHost", "DaemonThreadPool", "TaskRecord", "ErrorLog", "WorkerEvents", "current_task",
    # generators
    "STREAMING", "DYNAMIC", "StreamSpec", "stream_of", "stream_spec", "item_id", "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    # a worker process's runtime
    "Runtime", "attach_runtime", "detach_runtime", "make_current", "current_runtime", "process_runtime",
    "task_runtime", "mark_worker_process",
    # policy
    "allows_another", "call_retry_limit", "fits", "Feasibility", "engine_text",
    # errors
    "exceptions", "ActorNameTaken", "ErrorMap",
    # metadata stores on engines without a change feed
    "PollingWatch",
    # conformance gaps
    "Gap", "notimpl", "notyet", "never",
    # a job's runtime_env in an engine's workers
    "apply_runtime_env", "runtime_env_packages",
    # plugin wiring
    "hookimpl", "list_backends",
}


# anyray's modules other than the kit and the exceptions: reaching one through the anyray package is the same
# as importing it.
_MODULES = ({p.stem for p in (ROOT / "core").glob("*.py")} | {p.name for p in (ROOT / "core").iterdir() if p.is_dir()}
            | {"adapters", "conformance"}) - {"__init__", "exceptions", "backend_kit", "util", "__pycache__"}


def _allowed(module: str) -> bool:
    return module in ALLOWED or module.startswith("anyray.backend_kit.")


def _anyray_uses(path: pathlib.Path) -> list[str]:
    """Every way ``path`` reaches into anyray that the kit's rule forbids, as 'file:line: what'."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    bound = set()  # local names bound to anyray or one of its allowed modules

    def flag(node, what):
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == "anyray":
                    if not _allowed(alias.name):
                        flag(node, f"import {alias.name}")
                    bound.add(alias.asname or "anyray")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").partition(".")[0] == "anyray":
            for alias in node.names:
                if node.module == "anyray" and alias.name in _MODULES:
                    flag(node, f"from anyray import {alias.name} (a module outside the kit)")
                elif not _allowed(node.module):
                    flag(node, f"from {node.module} import {alias.name}")
                elif alias.name.startswith("_"):
                    flag(node, f"from {node.module} import {alias.name} (a private name)")
                if node.module == "anyray" and alias.name in ("exceptions", "backend_kit"):
                    bound.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root = node.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if not (isinstance(root, ast.Name) and root.id in bound):
            continue
        if node.attr.startswith("_") and not node.attr.startswith("__"):
            flag(node, f"{ast.unparse(node)} (a private name)")
        elif isinstance(node.value, ast.Name) and node.value.id == "anyray" and node.attr in _MODULES:
            flag(node, f"anyray.{node.attr} (a module outside the kit)")
    return bad


def test_the_plugins_import_only_the_kit_the_exceptions_and_the_public_api():
    assert PLUGIN_FILES, "no plugin sources found"
    bad = [line for path in PLUGIN_FILES for line in _anyray_uses(path)]
    assert not bad, "the plugins reach past anyray.backend_kit:\n" + "\n".join(bad)


def test_the_scan_catches_what_it_forbids():
    sample = ROOT / "plugins" / "_scan_sample.py"
    sample.write_text("import anyray\nfrom anyray import runtime as _rt\nfrom anyray.runtime import current_runtime\n"
                      "from anyray.backend_kit import _private\nfrom anyray.adapters.common import queues\n"
                      "x = anyray.api._runtime()\ny = anyray.actor\n")
    try:
        bad = _anyray_uses(sample)
    finally:
        sample.unlink()
    assert len(bad) == 7, bad


def test_the_kits_surface_is_what_the_readme_documents():
    assert set(kit.__all__) == DOCUMENTED
    assert len(kit.__all__) == len(set(kit.__all__)), "a name is listed twice in __all__"
    missing = [name for name in kit.__all__ if getattr(kit, name, None) is None]
    assert not missing, f"names in __all__ that do not resolve: {missing}"


def test_the_kit_is_core_it_never_imports_the_adapters():
    bad = []
    for path in sorted((ROOT / "core" / "backend_kit").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "adapters" in node.module.split("."):
                bad.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Import) and any("adapters" in a.name.split(".") for a in node.names):
                bad.append(f"{path.name}:{node.lineno}")
    assert not bad, f"the kit imports the adapters at {bad}"


def test_importing_the_kit_loads_no_pluggy():
    out = subprocess.run([sys.executable, "-c", "import sys, anyray.backend_kit; print('pluggy' in sys.modules)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    out = subprocess.run([sys.executable, "-c", "import sys; from anyray.backend_kit import hookimpl; "
                          "print('pluggy' in sys.modules, hookimpl.project_name)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "anyray"]


def test_the_error_map_translates_in_order_and_names_the_engine():
    from anyray.backend_kit import ErrorMap, exceptions

    class EngineError(Exception):
        pass

    class EngineTimeout(EngineError):
        pass

    errors = ErrorMap("Engine", [(EngineTimeout, exceptions.GetTimeoutError),
                                 (EngineError, lambda exc, what: exceptions.ObjectLostError(f"{what}: lost"))],
                      catches=EngineError)
    timeout = errors.translate(EngineTimeout("too late"))
    assert type(timeout) is exceptions.GetTimeoutError and str(timeout) == "too late"
    lost = errors.translate(EngineError(), "get()")
    assert type(lost) is exceptions.ObjectLostError and str(lost) == "get(): lost"
    plain = ValueError("not the engine's")
    assert errors.translate(plain) is plain
    ours = exceptions.TaskCancelledError("x")
    assert errors.translate(ours) is ours
    other = ErrorMap("Engine", []).translate(KeyError("k"), "f")
    assert type(other) is exceptions.AnyrayError and str(other) == "f: Engine failed with KeyError: 'k'"
