"""What a node keeps for its ``/metrics`` between scrapes: its workers' user metrics, the tasks finished and
failed, and how long tasks waited to start. Everything else a scrape reads from the node's parts as they
are then (``collector.py``).

Light on purpose (no prometheus_client): every node has one from its start, and the per-task part is a
few hundred nanoseconds (``FinishedTasks.add``, ``SchedulingLatency.observe``).
"""

from __future__ import annotations

import bisect
import threading

from anyray.util.metrics import TABLE, MetricTable

from ..node.metrics_link import METRICS_OP  # the request a worker (or a connected driver) sends its metrics in

# submit to start, in seconds: Ray's placement-time buckets, with finer ones below a tenth of a second
LATENCY_BOUNDARIES = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0,
                      1000.0, 10000.0)


class SchedulingLatency:
    """A histogram of the seconds from a task's submission on this node to its start on a worker. ``observe``
    runs under the node's lock (``Tasks.start``), so it takes none of its own."""

    def __init__(self, boundaries: tuple = LATENCY_BOUNDARIES):
        self.boundaries = boundaries
        self.buckets = [0] * (len(boundaries) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(self.boundaries, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> tuple[list, float]:
        return list(self.buckets), self.sum


class FinishedTasks:
    """How many tasks and actor calls finished, by name and outcome, counted from the records workers send with
    each result (``Supervision.count_records``)."""

    def __init__(self):
        self.counts: dict[tuple, int] = {}  # (name, failed) -> how many

    def add(self, records: list) -> None:
        counts = self.counts
        for row in records:  # a RecordRow: task_id, name, kind, start, end, pid, tid, error_type, message
            key = (row[1], row[7] is not None)
            counts[key] = counts.get(key, 0) + 1


class NodeMetrics:
    """One node's metric state (``node.metrics``): ``user``, the user metrics its workers and clients sent
    (``METRICS_OP``) and this process recorded; ``latency``; ``finished``. ``reports_groups``: whether this
    node's scrape lists placement groups (a cluster's head only: every node sees the cluster's groups, and
    Prometheus would count each once per node)."""

    def __init__(self, scheduler):
        self.user = MetricTable()
        self.latency = SchedulingLatency()
        self.finished = FinishedTasks()
        self.reports_groups = True
        self.registry = None  # the prometheus_client registry of this node, made on the first scrape
        self.registry_lock = threading.Lock()
        scheduler.register(METRICS_OP, self._op_metrics)
        scheduler.tasks.latency = self.latency
        scheduler.supervision.count_records = self.finished.add

    def _op_metrics(self, worker, rid, batch):
        self.user.merge(batch)

    def user_snapshot(self) -> tuple[dict, dict]:
        """The user metrics now: what workers sent, and what this process recorded since the last scrape."""
        taken = TABLE.take()
        if taken:
            self.user.merge(taken)
        return self.user.snapshot()
