"""The node's code split by the process it runs in: a worker loads none of the node's side, the node none
of the worker's. Checked in fresh interpreters, and in a real worker process."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import anyray

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "adapters" / "node"
# Modules only worker processes load, and what a worker must never load.
WORKER_ONLY = ["anyray.adapters.node.worker_main", "anyray.adapters.node.worker_actor",
               "anyray.adapters.node.worker_interrupts", "anyray.adapters.node.worker_output"]
NODE_SIDE = ["anyray.adapters.node.pool", "anyray.adapters.node.scheduler", "anyray.adapters.node.node",
             "concurrent.futures", "pluggy",
             "anyray.plugins"]


def _loaded_after(statement: str, names: list[str]) -> list[str]:
    code = (f"import sys, json\n{statement}\n"
            f"print(json.dumps([n for n in {names!r} if n in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_entry_loads_nothing_of_the_node_side():
    assert _loaded_after("import anyray.adapters.node.worker_main", NODE_SIDE) == []


def test_the_fork_server_preloads_the_worker_side_only():
    loaded = _loaded_after("import anyray.adapters.node.forkserver", NODE_SIDE + WORKER_ONLY)
    assert loaded == WORKER_ONLY  # every forked worker shares these pages; none of the node's


def test_the_worker_side_modules_never_import_subprocess_themselves():
    # (multiprocessing.connection, which every process linked to a node uses, imports it; the worker's own
    # modules add nothing that starts processes or waits on futures)
    for name in [*WORKER_ONLY, "anyray.adapters.node.worker_loop", "anyray.adapters.node.link",
                 "anyray.adapters.node.remote_ports", "anyray.adapters.node.framing", "anyray.adapters.node.messages"]:
        tree = ast.parse((NODE / (name.rsplit(".", 1)[1] + ".py")).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"subprocess", "concurrent.futures", "pluggy", "pool", "scheduler"}, name


def test_the_node_side_loads_nothing_of_the_worker_side():
    """The scheduler and every part it is built of (what a driver or node daemon runs)."""
    tree = ast.parse((NODE / "scheduler.py").read_text())
    modules = sorted({f"anyray.adapters.node.{node.module}" for node in tree.body
                      if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module})
    assert "anyray.adapters.node.supervision" in modules  # which starts workers through the pool
    statement = "\n".join(f"import {name}" for name in [*modules, "anyray.adapters.node.pool"])
    assert _loaded_after(statement, WORKER_ONLY + ["anyray.adapters.node.worker_loop"]) == []


def test_a_worker_process_holds_only_the_worker_side():
    """In a real worker, forked by the fork server and installed by the node: what a task there sees."""
    # a lambda travels by value: a function of this module would import it (and pytest) in the worker
    loaded = anyray.remote(lambda names: (os.getpid(), [n for n in names if n in sys.modules]))
    anyray.init(backend="multiprocess", num_cpus=1)
    try:
        pid, found = anyray.get(loaded.remote(NODE_SIDE + WORKER_ONLY), timeout=120)
    finally:
        anyray.shutdown()
    assert pid != os.getpid()
    assert found == WORKER_ONLY


def test_run_entry_runs_a_function_named_by_module_path():
    from anyray.adapters.node.framing import run_entry
    from anyray.adapters.node.pool import WorkerPool
    from anyray.adapters.node.session import Session

    session = Session()
    pool = WorkerPool(session)
    try:
        worker = pool.start_worker()
        assert worker.call(run_entry, "os", "getpid") == worker.pid != os.getpid()
        with pytest.raises(AttributeError):
            worker.call(run_entry, "os", "no_such_function")
    finally:
        pool.close()
        session.close()
