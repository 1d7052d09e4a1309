"""Where the dashboard's rows come from: the state API's own sources, never a second copy of their logic.

A driver's dashboard (``init(include_dashboard=True)``) reads what ``anyray.util.state`` reads: the backend's
StatePort, the job's event log for the tasks that ended, ``nodes()`` and the placement group table. A cluster
head's dashboard reads what ``anyray status`` and ``anyray list`` read from the head (the node records in the
metadata store, and every node's actors, tasks, objects and workers), plus the tasks the head's workers finished
(``taps.RecordTap``), turned into rows by the state API's own function.

Every source answers ``rows(kind)`` for the kinds in ``KINDS``, ``log(worker_id)`` and ``timeline()``.
"""

from __future__ import annotations

import os
import sys
import time

from anyray.util import state as _state

from ..node import messages as m

KINDS = ("nodes", "actors", "tasks", "objects", "workers", "placement_groups", "jobs", "drivers")


def with_counts(drivers: list[dict], actors: list[dict], tasks: list[dict], ended=()) -> list[dict]:
    """The driver jobs' rows (Ray's ``JobDetails`` of a driver job), each with how many of its actors are alive
    (``num_actors_alive``), its tasks waiting or running (``num_tasks_running``), and its tasks that ended
    (``num_tasks_finished``, ``num_tasks_failed``): from ``tasks`` rows that say their job, plus ``ended``,
    ``[job id, finished, failed]`` counted where no row says the job."""
    counts: dict = {}

    def add(job, key, n=1):
        if job:
            per = counts.setdefault(job, dict.fromkeys(("num_actors_alive", "num_tasks_running",
                                                         "num_tasks_finished", "num_tasks_failed"), 0))
            per[key] += n

    for row in actors:
        if row.get("state") != "DEAD":
            add(row.get("job_id"), "num_actors_alive")
    for row in tasks:
        state = row.get("state")
        add(row.get("job_id"), {"FINISHED": "num_tasks_finished", "FAILED": "num_tasks_failed"}.get(
            state, "num_tasks_running"))
    for job, finished, failed in ended:
        add(job, "num_tasks_finished", finished)
        add(job, "num_tasks_failed", failed)
    zero = dict.fromkeys(("num_actors_alive", "num_tasks_running", "num_tasks_finished", "num_tasks_failed"), 0)
    return [{**row, **counts.get(row["job_id"], zero)} for row in drivers]


def _plain(value):
    """A value JSON can carry (ids as hex, tuples as lists)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _log_text(logs, worker_id: str) -> dict | None:
    lines = logs.lines(worker_id) if logs is not None else None
    if lines is None:
        return None
    return {"worker_id": worker_id, "lines": [{"stream": s, "text": t} for s, t in lines]}


class DriverSource:
    """The job of this driver on a single-machine backend: what ``anyray.util.state`` lists."""

    def __init__(self, runtime, logs=None):
        self.runtime, self.logs = runtime, logs
        self.started = int(time.time() * 1000)  # the dashboard starts as init() returns: the job's start

    def describe(self) -> dict:
        return {"backend": self.runtime.backend.name, "job_id": _state.job_hex(self.runtime)}

    def rows(self, kind: str) -> list[dict]:
        if kind not in KINDS:
            raise KeyError(kind)
        if kind in ("actors", "tasks", "objects", "workers") and not getattr(self.runtime.scheduler,
                                                                              "lists_state", False):
            return []  # a backend without a StatePort: nothing to list of these kinds
        if kind == "drivers":
            return _plain(self._drivers())
        rows = _state.state_rows(kind)
        if kind == "nodes":
            free = _available_by_node(self.runtime)
            for row in rows:
                row["resources_available"] = free.get(row["node_id"], {})
        return _plain(rows)

    def _drivers(self) -> list[dict]:
        """This driver's job: the one a single-machine backend runs."""
        job = _state.job_hex(self.runtime)
        lists = getattr(self.runtime.scheduler, "lists_state", False)
        row = {"job_id": job, "submission_id": None, "type": "DRIVER", "status": "RUNNING",
               "entrypoint": " ".join(sys.argv) or None, "start_time": self.started, "end_time": None,
               "driver_info": {"id": job, "node_ip_address": "127.0.0.1", "pid": str(os.getpid())},
               "driver_node_id": self.runtime.backend.info().get("node_id"), "namespace": self.runtime.namespace}
        return with_counts([row], _state.state_rows("actors") if lists else [],
                           _state.state_rows("tasks") if lists else [])

    def log(self, worker_id: str) -> dict | None:
        return _log_text(self.logs, worker_id)

    def timeline(self) -> list[dict]:
        return _plain(self.runtime.events.trace_events())


def _available_by_node(runtime) -> dict:
    nodes = runtime.scheduler.nodes()
    if len(nodes) != 1:
        return {}
    return {nodes[0]["NodeID"]: dict(runtime.scheduler.available_resources())}


class ClusterSource:
    """The whole cluster, as its head sees it (``daemon``: the head's ``NodeDaemon``; ``taps``: the head's node's
    ``taps.NodeTaps``; every other node answers the ``dashboard_here`` request from its own)."""

    def __init__(self, daemon, taps):
        self.daemon, self.taps = daemon, taps

    def describe(self) -> dict:
        return {"backend": "cluster", "address": self.daemon.address, "metadata": self.daemon.metadata_kind}

    def rows(self, kind: str) -> list[dict]:
        if kind not in KINDS:
            raise KeyError(kind)
        return _plain(getattr(self, f"_{kind}")())

    def _list(self, kind: str) -> list[dict]:
        return self.daemon.list_rows(kind)

    def _everywhere(self, what: str, arg=None) -> list:
        """The answers of every node's taps, this one's first."""
        return self.taps.answer(what, arg) + self.daemon.scheduler.ask_every_node("dashboard_here",
                                                                                  m.DashboardAsk.pack(what, arg))

    def _nodes(self) -> list[dict]:
        status = self.daemon.status()
        alive = {n["node_id"] for n in status["nodes"]}
        rows = [{"node_id": n["node_id"], "node_ip": n["address"].rpartition(":")[0], "address": n["address"],
                 "is_head_node": bool(n.get("head")), "state": "ALIVE", "node_name": n.get("host"),
                 "pid": n.get("pid"), "resources_total": n.get("resources", {}),
                 "resources_available": n.get("available", {}), "start_time_ms": int(n.get("started", 0) * 1000),
                 "heartbeat_age_s": round(max(status["now"] - n.get("heartbeat", status["now"]), 0.0), 1)}
                for n in status["nodes"]]
        rows += [{"node_id": d["node_id"], "node_ip": d["address"].rpartition(":")[0], "address": d["address"],
                  "is_head_node": bool(d.get("head")), "state": "DEAD", "state_message": d.get("ended"),
                  "node_name": d.get("host"), "pid": d.get("pid"), "resources_total": d.get("resources", {}),
                  "resources_available": {}, "end_time_ms": int(d.get("ended_at", 0) * 1000)}
                 for d in status.get("dead", ()) if d["node_id"] not in alive]
        return rows

    def _actors(self) -> list[dict]:
        return self._list("actors")

    def _tasks(self) -> list[dict]:
        live = self._list("tasks")
        ended = self._everywhere("tasks")
        done = {row["task_id"] for row in ended}
        return [{"attempt_number": 0, **row} for row in live if row["task_id"] not in done] + ended

    def _objects(self) -> list[dict]:
        return self._list("objects")

    def _workers(self) -> list[dict]:
        return self._list("workers")

    def _placement_groups(self) -> list[dict]:
        return self.daemon.placement_groups()

    def _drivers(self) -> list[dict]:
        """Every driver that connected to a node of the cluster (each a job), with its work's counts."""
        drivers = sorted(self.daemon.list_rows("drivers"), key=lambda r: r.get("start_time") or 0)
        return with_counts(drivers, self._list("actors"), self._list("tasks"), self._everywhere("jobs"))

    def _jobs(self) -> list[dict]:
        """The cluster's jobs as Ray's ``/api/jobs/`` lists its driver jobs: its drivers."""
        return self._drivers()

    def log(self, worker_id: str) -> dict | None:
        node = worker_id.rpartition(":")[0]
        lines = self.taps.answer("log", worker_id) if node == self.taps.node_id else \
            self.daemon.scheduler.ask_every_node("dashboard_here", m.DashboardAsk.pack("log", worker_id))
        if not lines:
            return None
        return {"worker_id": worker_id, "lines": [{"stream": s, "text": t} for s, t in lines]}

    def timeline(self) -> list[dict]:
        return _plain(self._everywhere("timeline"))


def this_process() -> dict:
    return {"pid": os.getpid(), "python": sys.version.split()[0], "now": time.time()}
