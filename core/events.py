"""What happened to the tasks of a job: timeline spans and the errors of failed tasks.

Backends report each finished task here (from the driver, or forwarded from
their workers); the core turns the records into ``timeline()`` and
``error_info()`` and prints failures on the driver's stderr as they happen.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class TaskRecord:
    task_id: str
    name: str
    kind: str          # "task", "actor_creation" or "actor_task"
    start: float       # time.time() seconds
    end: float
    pid: int
    tid: int
    error_type: str | None = None
    message: str | None = None


class JobEvents:
    """Thread-safe log of finished tasks for one job. Bounded: old spans drop first."""

    def __init__(self, stream=None, max_spans: int = 100_000, echo_errors: bool = True):
        self._lock = threading.Lock()
        # appended to without the lock (a deque's append is atomic, and drops the oldest span when full);
        # read whole, in one C-level copy
        self._spans: collections.deque[TaskRecord] = collections.deque(maxlen=max_spans)
        self._errors: list[TaskRecord] = []
        self._stream = stream
        self._echo = echo_errors
        self._sources: list[Callable[[], Iterable[TaskRecord]]] = []

    def add_source(self, pull: Callable[[], Iterable[TaskRecord]]) -> None:
        """Also report records kept outside this log (where a backend's workers report them).

        ``pull()`` is called before each read and returns the records that are
        new since its previous call; they are not echoed again (the process
        that ran the task printed its failure)."""
        self._sources.append(pull)

    def _pull(self) -> None:
        for pull in self._sources:
            for record in pull():
                self._add(record)

    def _add(self, record: TaskRecord) -> None:
        self._spans.append(record)
        if record.error_type is not None:
            with self._lock:
                self._errors.append(record)

    def task_finished(self, record: TaskRecord) -> None:
        self._add(record)
        if record.error_type is not None and self._echo:
            stream = self._stream or sys.stderr
            first = (record.message or "").strip().splitlines()
            print(f"(anyray) {record.kind} {record.name} failed: {first[-1] if first else record.error_type} "
                  f"(anyray.error_info() lists all)", file=stream, flush=True)

    def error_info(self) -> list[dict]:
        self._pull()
        with self._lock:
            return [{"time": r.end, "task_id": r.task_id, "function": r.name,
                     "error_type": r.error_type, "message": r.message} for r in self._errors]

    def trace_events(self) -> list[dict]:
        """Chrome trace "complete" events (``ph: X``), microsecond timestamps."""
        self._pull()
        with self._lock:
            spans = list(self._spans)
        return [{"cat": r.kind, "name": r.name, "ph": "X", "pid": r.pid, "tid": r.tid,
                 "ts": r.start * 1e6, "dur": max(r.end - r.start, 0) * 1e6,
                 "args": {"task_id": r.task_id, **({"error": r.error_type} if r.error_type else {})}}
                for r in spans]

    def dump(self, filename: str) -> None:
        with open(filename, "w") as fh:
            import json

            json.dump(self.trace_events(), fh)

