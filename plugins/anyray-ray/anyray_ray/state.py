"""The StatePort on Ray: actors and workers from Ray's GCS tables, tasks from the GCS's task events and
objects from the raylets' reference tables (:mod:`~anyray_ray.state_sources`); none needs the dashboard.

Ray names what it lists with its own ids; the rows carry anyray's where this process knows them: the anyray
actor of each Ray actor it holds a handle to, the anyray task of each Ray task it submitted and of its
returns (the latest :data:`TASK_IDS_KEPT` tasks), the anyray ref of each object it put (while that ref
lives). A task's name is anyray's (an actor call's Ray method is the host's ``anyray_call``). Work this job
submitted from inside tasks keeps Ray's ids, and a task whose code raised is FINISHED to Ray (anyray's
executor returns the error as its value): the core lists it FAILED from the job's error log, under anyray's
id.
"""

from __future__ import annotations

import itertools
import threading
import weakref

import ray

from .actors import _registry

TASK_IDS_KEPT = 10_000
_TASK_ID_BYTES = 24  # a Ray ObjectID is its task's TaskID (24 bytes) then its index (4, little-endian)

# Ray task id -> (anyray task id, the call's name for an actor call else None, anyray id of its return(s))
_tasks: dict[bytes, tuple] = {}
_objects: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # Ray id of a put object -> anyray ref
_trim_lock = threading.Lock()


def note_object(ref) -> None:
    """Remember which anyray ref ``ref.native`` (a Ray ObjectRef ``put`` made) stands for, while ``ref`` lives."""
    _objects[ref.native.binary()] = ref


def note_task(spec, actor_call: bool) -> None:
    """Remember the Ray task of a submitted spec and the anyray ids of its returns (its first return's Ray id
    starts with the Ray task's). A dict insert per task; the oldest tenth goes when there are too many."""
    returns = spec.returns
    if not returns or returns[0].native is None:
        return
    ids = returns[0].binary() if len(returns) == 1 else tuple(r.binary() for r in returns)
    _tasks[returns[0].native.binary()[:_TASK_ID_BYTES]] = (spec.task_id, spec.name if actor_call else None, ids)
    if len(_tasks) > TASK_IDS_KEPT + TASK_IDS_KEPT // 10:
        with _trim_lock:
            for key in list(itertools.islice(_tasks, len(_tasks) - TASK_IDS_KEPT)):
                _tasks.pop(key, None)


def _anyray_object_id(ray_id: bytes, tasks: dict) -> str | None:
    """The anyray id (hex) of a Ray object this process put, or a return of a task it submitted."""
    ref = _objects.get(ray_id)
    if ref is not None:
        return ref.hex()
    known = tasks.get(ray_id[:_TASK_ID_BYTES])
    if known is None:
        return None
    index, ids = int.from_bytes(ray_id[_TASK_ID_BYTES:], "little"), known[2]  # returns count from 1
    if isinstance(ids, bytes):
        return ids.hex() if index == 1 else None
    return ids[index - 1].hex() if 1 <= index <= len(ids) else None


def _anyray_ids() -> dict[str, str]:
    """Ray actor id (hex) -> anyray actor id (hex), for the actors this process holds a handle to."""
    return {actor.handle._actor_id.hex(): actor.actor_id.hex() for actor in list(_registry.values())}


def _actor_rows() -> list[dict]:
    from ray._private import state  # Ray's GCS actor table; Ray's public state API needs the dashboard

    ids = _anyray_ids()
    this_job = ray.get_runtime_context().get_job_id()
    rows = []
    for ray_id, a in state.actors().items():
        address = a.get("Address") or {}
        row = {"actor_id": ids.get(ray_id, ray_id), "class_name": a.get("ActorClassName", ""),
               "state": a.get("State"), "name": a.get("Name") or "", "pid": a.get("Pid") or None,
               "node_id": address.get("NodeID") or None, "num_restarts": a.get("NumRestarts", 0),
               "is_detached": bool(a.get("IsDetached")), "death_cause": str(a.get("DeathCause") or "") or None}
        if a.get("JobID") != this_job:  # this job's actors get anyray's id of the job (the core adds it)
            row["job_id"] = a.get("JobID")
        rows.append(row)
    return rows


def _worker_rows() -> list[dict]:
    from ray._private import state  # Ray's GCS worker table, as ray._private.state.workers() reads it
    from ray.core.generated import common_pb2, gcs_pb2

    rows = []
    for blob in state.state._connect_and_get_accessor().get_worker_table():
        w = gcs_pb2.WorkerTableData.FromString(blob)
        exit_type = common_pb2.WorkerExitType.Name(w.exit_type) if w.HasField("exit_type") else None
        rows.append({"worker_id": w.worker_address.worker_id.hex(), "is_alive": w.is_alive,
                     "worker_type": common_pb2.WorkerType.Name(w.worker_type), "exit_type": exit_type,
                     "node_id": w.worker_address.node_id.hex(), "ip": w.worker_address.ip_address, "pid": w.pid,
                     "exit_detail": w.exit_detail or None, "start_time_ms": w.start_time_ms or None,
                     "end_time_ms": w.end_time_ms or None})
    return rows


def _task_rows() -> list[dict]:
    from .state_sources import task_rows

    actors = _anyray_ids()
    tasks = dict(_tasks)  # one C-level copy: atomic under the GIL
    this_job = ray.get_runtime_context().get_job_id()
    rows = task_rows()
    for row in rows:
        known = tasks.get(bytes.fromhex(row["task_id"]))
        if known is not None:
            row["task_id"], name = known[0].hex(), known[1]
            if name is not None:
                row["name"] = row["func_or_class_name"] = name
        parent = tasks.get(bytes.fromhex(row["parent_task_id"] or ""))
        if parent is not None:
            row["parent_task_id"] = parent[0].hex()
        if row.get("actor_id"):
            row["actor_id"] = actors.get(row["actor_id"], row["actor_id"])
        if row.get("job_id") == this_job:  # this job's tasks get anyray's id of the job (the core adds it)
            del row["job_id"]
    return rows


def _object_rows() -> list[dict]:
    from .state_sources import object_rows

    tasks = dict(_tasks)
    rows = object_rows()
    for row in rows:
        row["object_id"] = _anyray_object_id(bytes.fromhex(row["object_id"]), tasks) or row["object_id"]
    return rows


def _job_rows(job_id: bytes) -> list[dict]:
    from .state_sources import job_rows

    this_job = ray.get_runtime_context().get_job_id()
    rows = job_rows()
    for row in rows:
        if row["job_id"] == this_job:  # this driver's job is anyray's job
            row["job_id"] = row["driver_info"]["id"] = job_id.hex()
    return rows


class RayState:
    """The StatePort (``anyray.ports.StatePort``) of the Ray scheduler: every kind, and every job of the
    cluster (``lists_jobs``)."""

    lists_state = True
    lists_jobs = True

    def list_state(self, kind: str) -> list[dict]:
        if kind == "actors":
            return _actor_rows()
        if kind == "workers":
            return _worker_rows()
        if kind == "tasks":
            return _task_rows()
        if kind == "objects":
            return _object_rows()
        if kind == "jobs":
            return _job_rows(self._session.job_id)
        raise ValueError(f"Nothing to list called {kind!r}; pick actors, tasks, objects or workers.")
