"""What the dashboard keeps of a node's workers: the lines each printed, and (on a cluster head) the records of
the tasks they finished.

Both are tees on the node's sinks (``Seams.output_sink``, ``Seams.record_sink``): each keeps a bounded copy and
hands everything on to the sink it wraps, so drivers see what they saw before.
"""

from __future__ import annotations

import collections
import threading

from anyray.events import JobEvents, TaskRecord

from ..node import messages as m

LINES_PER_WORKER = 2000  # the last lines of each worker's log the dashboard shows
WORKERS_KEPT = 500  # workers whose logs are kept; the one that printed longest ago goes first
RECORDS_KEPT = 10_000  # finished tasks the head's dashboard remembers


class WorkerLogs:
    """The output sink of a node whose dashboard shows each worker's log: keeps the last lines of every worker
    (by the worker id ``anyray list workers`` shows, ``NODE:N``) and passes every line on."""

    def __init__(self, inner, node_id: str):
        self.inner, self.node_id = inner, node_id
        self._logs: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, worker, output: list) -> None:
        key = f"{self.node_id}:{worker.handle.worker_id}"
        lines = [m.OutputLine._make(row) for row in output]
        with self._lock:
            kept = self._logs.pop(key, None) or collections.deque(maxlen=LINES_PER_WORKER)
            self._logs[key] = kept
            while len(self._logs) > WORKERS_KEPT:
                self._logs.popitem(last=False)
            kept.extend((line.stream, line.text) for line in lines)
        self.inner.add(worker, output)

    def lines(self, worker_id: str) -> list[tuple[str, str]] | None:
        """``(stream, text)`` pieces the worker printed, oldest first; None for a worker that printed nothing."""
        with self._lock:
            kept = self._logs.get(worker_id)
            return list(kept) if kept is not None else None

    @classmethod
    def install(cls, seams, node_id: str) -> WorkerLogs:
        tap = cls(seams.output_sink, node_id)
        seams.output_sink = tap
        return tap


class RecordTap:
    """The record sink of a cluster head's node with a dashboard: a copy of each finished task's record goes to
    ``events`` (the log ``timeline()`` and ``error_info()`` read on a driver), the records go on to the node's
    sink for their drivers."""

    def __init__(self, inner):
        self.inner = inner
        self.events = JobEvents(max_spans=RECORDS_KEPT, echo_errors=False)

    def add(self, worker, records: list) -> None:
        for row in records:
            self.events.task_finished(TaskRecord(*row))  # a RecordRow has TaskRecord's fields, in order
        self.inner.add(worker, records)

    @classmethod
    def install(cls, seams) -> RecordTap:
        tap = cls(seams.record_sink)
        seams.record_sink = tap
        return tap
