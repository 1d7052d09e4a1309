"""What a node tells about the work it ran: the task records its workers send (``timeline``,
``error_info``) and what its tasks print.

These are the node's own sinks, for a node that serves one driver (the
multiprocess backend): records wait here until the driver's event log pulls
them, and output goes to this process's streams. A cluster node files both
per job instead (``cluster/records.py``).
"""

from __future__ import annotations

import collections
import sys

from anyray.events import TaskRecord
from anyray.experimental.bars import write_output

from . import messages as m
from .store import ArenaObject


class LocalRecords:
    """Task records until the driver's event log pulls them."""

    def __init__(self):
        self._records: collections.deque = collections.deque()

    def add(self, worker, records: list) -> None:
        """Records of tasks ``worker`` finished (``RecordRow``s)."""
        self._records.extend(records)

    def pull(self) -> list:
        out = []
        while self._records:
            out.append(TaskRecord(*self._records.popleft()))  # a RecordRow has TaskRecord's fields, in order
        return out


class LocalOutput:
    """What a worker's tasks printed (workers that forward it): here, on this process's own streams."""

    def add(self, worker, output: list) -> None:
        """``output``: the ``OutputLine``s a worker sent."""
        for row in output:
            line = m.OutputLine._make(row)
            write_output(getattr(sys, line.stream), line.text)  # progress bars drawn, other lines above them


# A node's states in Ray's words (``anyray.util.state`` shows them as Ray's state API does).
ACTOR_STATES = {"pending": "PENDING_CREATION", "alive": "ALIVE", "restarting": "RESTARTING", "dead": "DEAD"}
TASK_STATES = {"waiting": "PENDING_ARGS_AVAIL", "queued": "PENDING_NODE_ASSIGNMENT", "running": "RUNNING"}


def _hex(value) -> str:
    return value.hex() if isinstance(value, bytes) else str(value or "")


def _actor_row(a, node_id: str) -> dict:
    spec = a.spec
    return {"actor_id": spec.actor_id.hex(), "class_name": spec.cls.name,
            "state": ACTOR_STATES.get(a.state, a.state.upper()), "name": spec.options.get("name") or "",
            "pid": a.worker.handle.pid if a.worker else None, "num_restarts": a.restarts, "node_id": node_id,
            "job_id": _hex(a.job[0]), "ray_namespace": spec.namespace, "required_resources": dict(spec.resources),
            "death_cause": a.cause or None, "is_detached": spec.options.get("lifetime") == "detached"}


def _task_rows(tasks: dict, actors: dict, node_id: str) -> list[dict]:
    rows = [{"task_id": t.spec.task_id.hex(), "name": t.spec.name, "state": TASK_STATES.get(t.state, t.state.upper()),
             "type": "NORMAL_TASK", "func_or_class_name": t.spec.function.name, "actor_id": None,
             "job_id": _hex(t.job[0]), "worker_pid": t.worker.handle.pid if t.worker else None, "node_id": node_id,
             "required_resources": dict(t.spec.resources)}
            for t in {id(t): t for t in list(tasks.values())}.values() if t.state != "done" and t.node is None]
    for a in list(actors.values()):
        pid = a.worker.handle.pid if a.worker else None
        for state, calls in (("SUBMITTED_TO_WORKER", list(a.inflight.values())),
                             ("PENDING_NODE_ASSIGNMENT", list(a.buffered))):
            rows += [{"task_id": c.task_id.hex(), "name": c.name, "state": state, "type": "ACTOR_TASK",
                      "func_or_class_name": c.name, "actor_id": a.spec.actor_id.hex(), "job_id": _hex(a.job[0]),
                      "worker_pid": pid, "node_id": node_id, "required_resources": {}} for c in calls]
    return rows


def listing(kind: str, node_id: str, actors: dict, tasks: dict, store, workers: dict | None = None) -> list[dict]:
    """What ``anyray list`` and ``anyray.util.state`` show of a node: its ``actors``, ``tasks``, ``objects``
    or ``workers``, with Ray's field names (``anyray.ports.StatePort``)."""
    if kind == "actors":
        return [_actor_row(a, node_id) for a in list(actors.values())]
    if kind == "tasks":
        return _task_rows(tasks, actors, node_id)
    if kind == "objects":
        out = []
        for oid, entry in store.entries():
            shared = type(entry) is ArenaObject
            out.append({"object_id": oid.hex(), "object_size": entry.nbytes, "shared_memory": shared,
                        "node_id": node_id})
        return out
    if kind == "workers":
        return [{"worker_id": f"{node_id}:{w.handle.worker_id}", "pid": w.handle.pid, "node_id": node_id,
                 "worker_type": "DRIVER" if w.handle.adopted and not w.peer else "WORKER", "is_alive": not w.dead}
                for w in list((workers or {}).values()) if not w.peer]
    raise ValueError(f"Nothing to list called {kind!r}; pick actors, tasks, objects or workers.")
