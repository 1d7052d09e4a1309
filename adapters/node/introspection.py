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
            getattr(sys, line.stream).write(line.text)


def listing(kind: str, node_id: str, actors: dict, tasks: dict, store) -> list[dict]:
    """What ``anyray list`` shows of a node: its ``actors``, ``tasks`` or ``objects``."""
    if kind == "actors":
        return [{"actor_id": a.spec.actor_id.hex(), "class_name": a.spec.cls.name, "state": a.state.upper(),
                 "name": a.spec.options.get("name") or "", "pid": a.worker.handle.pid if a.worker else None,
                 "restarts": a.restarts, "node_id": node_id} for a in list(actors.values())]
    if kind == "tasks":
        return [{"task_id": t.spec.task_id.hex(), "name": t.spec.name, "state": t.state.upper(),
                 "pid": t.worker.handle.pid if t.worker else None, "node_id": node_id}
                for t in {id(t): t for t in list(tasks.values())}.values()]
    if kind == "objects":
        out = []
        for oid, entry in store.entries():
            shared = type(entry) is ArenaObject
            out.append({"object_id": oid.hex(), "size": entry.nbytes, "shared_memory": shared, "node_id": node_id})
        return out
    raise ValueError(f"Nothing to list called {kind!r}; pick actors, tasks or objects.")
