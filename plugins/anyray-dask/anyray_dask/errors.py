"""Dask's failures, translated into ``anyray.exceptions`` at the adapter boundary.

User code never raises through Dask: the core's executor catches its errors
inside the Dask task and stores them as values. What reaches here is Dask's
own: a future cancelled, a task whose workers kept dying, data that is gone,
a scheduler that cannot be reached.
"""

from __future__ import annotations

from concurrent.futures import CancelledError

from anyray import exceptions as ae


def translate(exc: BaseException, what: str = "") -> BaseException:
    """The anyray exception for Dask's ``exc`` (``exc`` itself when it is already anyray's)."""
    from distributed.scheduler import KilledWorker

    if isinstance(exc, ae.AnyrayError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, CancelledError):
        return ae.TaskCancelledError(f"{prefix}the task was cancelled.")
    if isinstance(exc, KilledWorker):
        return ae.WorkerCrashedError(
            f"{prefix}the Dask workers running this task died {_text(exc)}; Dask gave up on it after "
            f"distributed.scheduler.allowed-failures retries.")
    if isinstance(exc, (OSError, TimeoutError)):
        return ae.ObjectLostError(f"{prefix}Dask could not deliver the object: {_text(exc)}")
    return ae.AnyrayError(f"{prefix}Dask failed with {type(exc).__name__}: {_text(exc)}")


def _text(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
