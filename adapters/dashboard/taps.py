"""What the dashboard keeps of a node's workers: the lines each printed, and (on a cluster node) the records of
the tasks they finished.

Both are tees on the node's sinks (``Seams.output_sink``, ``Seams.record_sink``): each keeps a bounded copy and
hands everything on to the sink it wraps, so drivers see what they saw before. A cluster node puts them in
place when a head's dashboard first asks it (``NodeTaps``, the ``dashboard_here`` request), so a cluster
without a dashboard pays nothing for them.
"""

from __future__ import annotations

import collections
import threading
import types

from anyray.events import JobEvents, TaskRecord
from anyray.util import state as _state

from ..node import messages as m

LINES_PER_WORKER = 1000  # the last pieces of each worker's log the dashboard shows
LINE_CHARS = 4000  # a longer piece is cut
WORKERS_KEPT = 200  # workers whose logs are kept; the one that printed longest ago goes first
RECORDS_KEPT = 5000  # finished tasks a node keeps for the dashboard
TASK_ROWS = 1000  # the finished tasks a node tells the dashboard of (the latest)


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
            kept.extend((line.stream, line.text[:LINE_CHARS]) for line in lines)
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
        self.ended: collections.Counter = collections.Counter()  # (job id hex, failed) -> tasks ended

    def add(self, worker, records: list) -> None:
        job = worker.job[0] if getattr(worker, "job", None) else b""
        job = job.hex() if isinstance(job, bytes) else str(job)
        for row in records:
            record = TaskRecord(*row)  # a RecordRow has TaskRecord's fields, in order
            self.events.task_finished(record)
            self.ended[(job, record.error_type is not None)] += 1
        self.inner.add(worker, records)

    @classmethod
    def install(cls, seams) -> RecordTap:
        tap = cls(seams.record_sink)
        seams.record_sink = tap
        return tap


class NodeTaps:
    """A cluster node's taps, and its answers to the head's dashboard (``dashboard_here``: ``(what, arg)``)."""

    _by_node: dict = {}  # node id -> its taps (a process runs one node daemon)
    _lock = threading.Lock()

    def __init__(self, seams, node_id: str):
        self.node_id = node_id
        self.logs = WorkerLogs.install(seams, node_id)
        self.records = RecordTap.install(seams)

    @classmethod
    def of(cls, daemon) -> NodeTaps:
        """The taps of the node of ``daemon`` (a ``NodeDaemon``), put in place on the first call."""
        node_id = daemon.node.node_id
        with cls._lock:
            taps = cls._by_node.get(node_id)
            if taps is None:
                taps = cls._by_node[node_id] = cls(daemon.scheduler.seams, node_id)
            return taps

    def answer(self, what: str, arg=None) -> list:
        """``tasks``: rows of the tasks that ended here (the latest); ``timeline``: their Chrome trace events;
        ``log``: ``[(stream, text)]`` worker ``arg`` printed, [] if it is not one of this node's; ``jobs``:
        ``[job id, tasks finished, tasks failed]`` of each job whose tasks ended here."""
        if what == "tasks":
            rows = _state.finished_task_rows(types.SimpleNamespace(events=self.records.events), self.node_id)
            return rows[-TASK_ROWS:]
        if what == "timeline":
            return self.records.events.trace_events()[-RECORDS_KEPT:]
        if what == "log":
            return self.logs.lines(arg) or []
        if what == "jobs":
            ended = dict(self.records.ended)
            return [[job, ended.get((job, False), 0), ended.get((job, True), 0)] for job in {j for j, _ in ended}]
        raise ValueError(f"a dashboard asks a node for tasks, timeline, log or jobs; not {what!r}")
