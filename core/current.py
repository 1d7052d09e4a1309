"""The current runtime: the one process-wide global, and what reads it.

A leaf module (it imports nothing of anyray), so that the API's objects
(remote functions, actor handles, refs) reach the runtime without importing
the modules that build it. ``require_runtime`` starts the default backend
on first use, through the function the API registers (``set_autostart``),
as Ray starts one on the first ``.remote()`` without ``init``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable

_current = None  # the Runtime of this process (set by init, or by a worker's setup)
# A worker process of a shared engine (a Dask cluster) runs tasks of several jobs at once: each task
# sees its own job's runtime here, set by the backend around the task (``task_runtime``).
_task_runtime: contextvars.ContextVar = contextvars.ContextVar("anyray_runtime", default=None)
_autostart: Callable[[], object] | None = None


def current_runtime():
    """The runtime of the running task's job, else this process's; None before ``init``."""
    return _task_runtime.get() or _current


def process_runtime():
    """This process's runtime, whatever the running task's job is."""
    return _current


def require_runtime():
    """The current runtime, starting the default backend if there is none yet."""
    runtime = _task_runtime.get() or _current
    if runtime is None:
        if _autostart is None:
            raise RuntimeError("anyray is not initialized: call anyray.init() first.")
        runtime = _autostart()
    return runtime


def set_autostart(start: Callable[[], object]) -> None:
    """Register what ``require_runtime`` calls to start a runtime (``anyray.api`` does, at import)."""
    global _autostart
    _autostart = start


def current_counter():
    rt = _task_runtime.get() or _current
    return rt.counter if rt is not None else None


def current_handle_counter():
    rt = _task_runtime.get() or _current
    return rt.handles if rt is not None else None


@contextlib.contextmanager
def task_runtime(runtime):
    """Make ``runtime`` the current one in this context (this thread, or this asyncio task) only."""
    token = _task_runtime.set(runtime)
    try:
        yield runtime
    finally:
        _task_runtime.reset(token)


def set_current(runtime) -> None:
    global _current
    _current = runtime
