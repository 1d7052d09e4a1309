"""A backend's worker processes and their anyray runtime: attach one, scope it to a task, detach it.

An engine (Ray, Dask) runs anyray's tasks in processes of its own, where user
code calls ``anyray.get`` and ``.remote()`` too: there the backend attaches a
runtime of the driver's job to the engine, on first use.
"""

from __future__ import annotations

from anyray import context, current
from anyray.current import current_runtime, process_runtime, task_runtime
from anyray.ports.backend import Backend, BackendConfig
from anyray.runtime import Runtime


def attach_runtime(backend_cls: type[Backend], config: BackendConfig, *, make_current: bool = False) -> Runtime:
    """A runtime of ``config.job_id``'s job in this process, on ``backend_cls`` (started, attached to an
    engine already running). With ``make_current`` it becomes this process's runtime (see
    :func:`make_current`)."""
    runtime = Runtime(backend_cls, config)
    if make_current:
        current.set_current(runtime)
    return runtime


def make_current(runtime: Runtime | None) -> None:
    """Make ``runtime`` this process's runtime: the one code outside any task's context sees (threads the
    user's code starts). Inside a task, :func:`task_runtime` scopes one to the task instead."""
    current.set_current(runtime)


def detach_runtime(runtime: Runtime) -> None:
    """Shut ``runtime`` down (its backend leaves the engine running); if it was this process's runtime,
    the process has none afterwards."""
    if current.process_runtime() is runtime:
        current.set_current(None)
    runtime.shutdown()


def mark_worker_process(ip: str | None = None) -> None:
    """Say that this process is a worker whose output goes to the driver (the engine forwards what it
    prints): progress bars (``anyray.experimental.tqdm_ray``) then send their state there as lines with
    Ray's mark, for the driver to draw, instead of drawing here. ``ip``: the address of its node."""
    context.worker_process = True
    context.worker_ip = ip


__all__ = ["Runtime", "attach_runtime", "current_runtime", "detach_runtime", "make_current", "mark_worker_process",
           "process_runtime", "task_runtime"]
