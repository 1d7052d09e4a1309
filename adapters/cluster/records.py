"""What a cluster node tells about the whole cluster: task records and task output filed per job until
the job's driver reads them (from every node), and the cluster's resources.

A node serves many drivers, so what their tasks leave behind is kept per job,
bounded (``_PerJob``). A driver asks the node it is connected to, which asks
every other node (``ask_every_node``) and joins the answers.
"""

from __future__ import annotations

import collections
import threading

from ..common.resources import NodeResources
from ..node import messages as m

ASK_SECONDS = 10.0  # how long a question to every node waits for the answers
RECORDS_PER_JOB = 10_000  # task records kept per job until its driver reads them (timeline, error_info)
JOBS_KEPT = 64  # jobs whose records a node keeps; the longest unread go first
OUTPUT_PER_JOB = 100_000  # pieces of task output kept per job until its driver reads them


class _PerJob:
    """What a node keeps for each job until the job's driver reads it: a bounded deque per job, and a
    bounded number of jobs (the one unread longest goes first)."""

    def __init__(self, per_job: int):
        self._per_job = per_job
        self._jobs: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: bytes, items) -> None:
        with self._lock:
            kept = self._jobs.get(job)
            if kept is None:
                kept = self._jobs[job] = collections.deque(maxlen=self._per_job)
                while len(self._jobs) > JOBS_KEPT:
                    self._jobs.popitem(last=False)
            kept.extend(items)

    def take(self, job: bytes) -> list:
        with self._lock:
            kept = self._jobs.pop(job, None)
        return list(kept) if kept else []



class PerJobRecords:
    """The node's record sink: task records filed per job (a node serves many drivers), until the job's
    driver reads them."""

    def __init__(self):
        self.kept = _PerJob(RECORDS_PER_JOB)

    def add(self, worker, records: list) -> None:
        self.kept.add(worker.job[0], records)


class PerJobOutput:
    """The node's output sink: what tasks print, filed per job until its driver asks (``output``), with
    the pid of the worker that printed it."""

    def __init__(self):
        self.kept = _PerJob(OUTPUT_PER_JOB)

    def add(self, worker, output: list) -> None:
        pid = worker.handle.pid
        for line in map(m.OutputLine._make, output):
            self.kept.add(line.job, (m.PrintedLine.pack(line.stream, pid, line.text),))


class Reports:
    """The requests a driver reads what tasks left behind with: ``records`` and ``output`` (of every
    node), ``records_here`` and ``output_here`` (of this one, asked by another node)."""

    def __init__(self, records: PerJobRecords, output: PerJobOutput, ask_every_node):
        self._records, self._output, self._ask = records.kept, output.kept, ask_every_node

    def register(self, register) -> None:
        register("records", self._op_records)
        register("records_here", self._op_records_here)
        register("output", self._op_output)
        register("output_here", self._op_output_here)

    def _op_records(self, worker, rid, job: bytes):
        """The task records of ``job`` from every node, new since the last time it asked."""
        return self._records.take(job) + self._ask("records_here", job)

    def _op_records_here(self, worker, rid, job: bytes):
        return self._records.take(job)

    def _op_output(self, worker, rid, job: bytes):
        """What the tasks of ``job`` printed on every node since the last time it asked."""
        return self._output.take(job) + self._ask("output_here", job)

    def _op_output_here(self, worker, rid, job: bytes):
        return self._output.take(job)


def ask_every_node(view, op: str, args) -> list:
    """Ask every other node of ``view`` ``op(args)`` at once; the answers (lists) joined, within ``ASK_SECONDS``."""
    others = [r["node_id"] for r in view.totals()] if view is not None else []
    if not others:
        return []
    lock, done = threading.Lock(), threading.Event()
    answers, left = [], [len(others)]

    def answered(ok, value):
        with lock:
            if ok:
                answers.extend(value)
            left[0] -= 1
            if not left[0]:
                done.set()

    for node_id in others:
        try:
            view.link(node_id).call(op, args, answered)
        except (OSError, PermissionError):
            answered(False, None)
    done.wait(ASK_SECONDS)
    with lock:
        return list(answers)


class ClusterResources(NodeResources):
    """The node's resources plus those every other node publishes (``view``, once attached)."""

    def __init__(self, pool):
        super().__init__(pool)
        self.view = None

    def _records(self):
        return self.view.totals() if self.view else ()

    def cluster_resources(self) -> dict:
        total = dict(self.pool.total())
        for record in self._records():
            for k, v in record["resources"].items():
                total[k] = total.get(k, 0.0) + v
        return total

    def available_resources(self) -> dict:
        free = dict(self.pool.available())
        for record in self._records():
            for k, v in record["available"].items():
                free[k] = free.get(k, 0.0) + v
        return free

    def nodes(self) -> list[dict]:
        out = super().nodes()
        for record in self._records():
            host = record["address"].rpartition(":")[0]
            out.append({"NodeID": record["node_id"], "Alive": True, "alive": True, "NodeManagerAddress": host,
                        "NodeManagerHostname": record.get("host", host), "Resources": record["resources"]})
        return out
