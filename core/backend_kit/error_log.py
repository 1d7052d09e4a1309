"""Failed tasks reported from an engine's workers to the driver's ``error_info()``.

For backends on an engine of their own (Ray, Dask), a task runs in one of
the engine's worker processes, so its failure is recorded there. The worker
writes the record into the backend's metadata store (:class:`ErrorLog`)
before the task's result is stored, so by the time a caller sees the
failure, the driver's ``error_info()`` (which pulls the log, see
``JobEvents.add_source``) lists it. Only failures travel: successful tasks
cost nothing here.
"""

from __future__ import annotations

import json
import logging
import threading
import time

from anyray.events import TaskRecord

log = logging.getLogger(__name__)

_FIELDS = ("task_id", "name", "kind", "start", "end", "pid", "tid", "error_type", "message")


class ErrorLog:
    """The failures of one job, under ``jobs/<job id>/errors/`` in the metadata store."""

    def __init__(self, metadata, job_id: bytes):
        self._metadata = metadata
        self._prefix = f"jobs/{job_id.hex()}/errors/"
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def report(self, record: TaskRecord) -> None:
        key = f"{self._prefix}{time.time_ns():020d}-{record.task_id}"
        with self._lock:
            self._seen.add(key)  # this process logged it itself
        self._metadata.put(key, json.dumps([getattr(record, f) for f in _FIELDS]).encode())

    def pull(self) -> list[TaskRecord]:
        """Records other processes reported since the last pull, oldest first."""
        with self._lock:
            fresh = [(k, v) for k, v in self._metadata.scan(self._prefix) if k not in self._seen]
            self._seen.update(k for k, _ in fresh)
        return [TaskRecord(*json.loads(v)) for _, v in fresh]

    def clear(self) -> None:
        self._metadata.delete_prefix(self._prefix)


class WorkerEvents:
    """What the executor reports to inside an engine's worker: failures go to the job's ErrorLog.

    ``local`` (the worker runtime's JobEvents) keeps the failure and prints it
    on the worker's stderr, which the engine shows on the driver's terminal.
    Successful tasks are not kept (the backend does not declare ``timeline``).
    """

    def __init__(self, local, log: ErrorLog):
        self._local = local
        self._log = log

    def task_finished(self, record: TaskRecord) -> None:
        if record.error_type is None:
            return  # a worker's own timeline would be a fragment of the job's: keep nothing
        try:
            self._log.report(record)
        except ConnectionError as exc:  # the failure itself still reaches the caller
            log.warning("could not log the failure of %s: %s", record.name, exc)
        self._local.task_finished(record)
