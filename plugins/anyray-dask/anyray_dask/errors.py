"""Dask's failures, translated into ``anyray.exceptions`` at the adapter boundary.

User code never raises through Dask: the core's executor catches its errors
inside the Dask task and stores them as values. What reaches here is Dask's
own: a future cancelled, a task whose workers kept dying, data that is gone,
a scheduler that cannot be reached.
"""

from __future__ import annotations

from concurrent.futures import CancelledError

from distributed.scheduler import KilledWorker

from anyray import exceptions as ae
from anyray.backend_kit import ErrorMap
from anyray.backend_kit.errors import text


def _prefix(what: str) -> str:
    return f"{what}: " if what else ""


ERRORS = ErrorMap("Dask", [
    (CancelledError, lambda exc, what: ae.TaskCancelledError(f"{_prefix(what)}the task was cancelled.")),
    (KilledWorker, lambda exc, what: ae.WorkerCrashedError(
        f"{_prefix(what)}the Dask workers running this task died {text(exc)}; Dask gave up on it after "
        f"distributed.scheduler.allowed-failures retries.")),
    ((OSError, TimeoutError), lambda exc, what: ae.ObjectLostError(
        f"{_prefix(what)}Dask could not deliver the object: {text(exc)}")),
])


def translate(exc: BaseException, what: str = "") -> BaseException:
    """The anyray exception for Dask's ``exc`` (``exc`` itself when it is already anyray's)."""
    return ERRORS.translate(exc, what)
