"""``ray.util.state``: list and summarize what the cluster runs and holds, as Ray 2.x's state API.

``list_actors``, ``list_tasks``, ``list_objects``, ``list_workers`` read the backend's StatePort
(``anyray.ports.StatePort``: the rows ``anyray list`` shows, from every node), and ``list_tasks`` adds the
tasks the job's event log says finished or failed; ``list_nodes`` reads ``nodes()``, ``list_placement_groups``
the PlacementGroupPort's table, ``list_jobs`` the jobs the backend lists (every job of a Ray cluster), else
the job of this driver. Results are Ray's types with Ray's field names (``ActorState``, ``TaskState``, ...;
``detail=True`` fills the detail columns, else they are None), filtered as Ray filters them (``(key, "=" or
"!=", value)``, strings compared case-insensitively, a string value converted to the column's int or bool),
at most ``limit`` of them. Given a dashboard's address (``address="http://127.0.0.1:8265"``, as Ray's), the
``list_*`` functions read the rows its JSON API serves instead, with no ``init`` needed (the token: the
cluster's, as ``anyray start`` left it on this machine, or ``$ANYRAY_CLUSTER_TOKEN``).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .. import runtime as _rt

DEFAULT_LIMIT = 100
DEFAULT_RPC_TIMEOUT = 30


class RayStateApiException(Exception):
    """A state query failed: a filter on a column that cannot be filtered, or output the backend lacks."""


def _col(*, filterable: bool = True, detail: bool = False):
    return field(default=None, metadata={"filterable": filterable, "detail": detail})


class StateSchema:
    """Ray's state rows: dataclasses that also read like dicts (``row["state"]``, ``row.get("name")``)."""

    @classmethod
    def filterable_columns(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if f.metadata.get("filterable")}

    @classmethod
    def base_columns(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("detail")}

    @classmethod
    def detail_columns(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def columns(cls) -> set[str]:
        return cls.detail_columns()

    def asdict(self) -> dict:
        return dataclasses.asdict(self)

    def __getitem__(self, key):
        return getattr(self, key)

    def __setitem__(self, key, value):
        setattr(self, key, value)

    def get(self, key, default=None):
        return getattr(self, key, default)


@dataclass
class ActorState(StateSchema):
    actor_id: str = _col()
    class_name: str = _col()
    state: str = _col()
    job_id: str = _col()
    name: str = _col()
    node_id: str = _col()
    pid: int = _col()
    ray_namespace: str = _col()
    serialized_runtime_env: str = _col(filterable=False, detail=True)
    required_resources: dict = _col(filterable=False, detail=True)
    death_cause: Any = _col(filterable=False, detail=True)
    is_detached: bool = _col(filterable=False, detail=True)
    placement_group_id: str = _col(detail=True)
    repr_name: str = _col(detail=True)
    num_restarts: int = _col(filterable=False, detail=True)
    num_restarts_due_to_lineage_reconstruction: int = _col(filterable=False, detail=True)
    num_restarts_due_to_node_preemption: int = _col(filterable=False, detail=True)
    call_site: str = _col(filterable=False, detail=True)
    label_selector: dict = _col(filterable=False, detail=True)
    fallback_strategy: Any = _col(filterable=False, detail=True)


@dataclass
class TaskState(StateSchema):
    task_id: str = _col()
    attempt_number: int = _col()
    name: str = _col()
    state: str = _col()
    job_id: str = _col()
    actor_id: str = _col()
    type: str = _col()
    func_or_class_name: str = _col()
    parent_task_id: str = _col()
    node_id: str = _col()
    worker_id: str = _col()
    worker_pid: int = _col()
    error_type: str = _col()
    language: str = _col(detail=True)
    required_resources: dict = _col(filterable=False, detail=True)
    runtime_env_info: Any = _col(filterable=False, detail=True)
    placement_group_id: str = _col(detail=True)
    events: list = _col(filterable=False, detail=True)
    profiling_data: Any = _col(filterable=False, detail=True)
    creation_time_ms: int = _col(filterable=False, detail=True)
    start_time_ms: int = _col(filterable=False, detail=True)
    end_time_ms: int = _col(filterable=False, detail=True)
    task_log_info: Any = _col(filterable=False, detail=True)
    error_message: str = _col(filterable=False, detail=True)
    is_debugger_paused: bool = _col(detail=True)
    call_site: str = _col(filterable=False, detail=True)
    label_selector: dict = _col(filterable=False, detail=True)
    fallback_strategy: Any = _col(filterable=False, detail=True)


@dataclass
class ObjectState(StateSchema):
    object_id: str = _col()
    object_size: int = _col()
    task_status: str = _col()
    attempt_number: int = _col()
    reference_type: str = _col()
    call_site: str = _col()
    type: str = _col()
    pid: int = _col()
    ip: str = _col()


@dataclass
class NodeState(StateSchema):
    node_id: str = _col()
    node_ip: str = _col()
    is_head_node: bool = _col()
    state: str = _col()
    state_message: str = _col(filterable=False)
    node_name: str = _col()
    resources_total: dict = _col(filterable=False)
    labels: dict = _col(filterable=False)
    start_time_ms: int = _col(filterable=False, detail=True)
    end_time_ms: int = _col(filterable=False, detail=True)


@dataclass
class WorkerState(StateSchema):
    worker_id: str = _col()
    is_alive: bool = _col()
    worker_type: str = _col()
    exit_type: str = _col()
    node_id: str = _col()
    ip: str = _col()
    pid: int = _col()
    exit_detail: str = _col(filterable=False, detail=True)
    worker_launch_time_ms: int = _col(filterable=False, detail=True)
    worker_launched_time_ms: int = _col(filterable=False, detail=True)
    start_time_ms: int = _col(filterable=False, detail=True)
    end_time_ms: int = _col(filterable=False, detail=True)
    debugger_port: int = _col(detail=True)
    num_paused_threads: int = _col(detail=True)


@dataclass
class JobState(StateSchema):
    job_id: str = _col()
    submission_id: str = _col()
    entrypoint: str = _col(filterable=False)
    type: str = _col()
    status: str = _col()
    message: str = _col(filterable=False)
    error_type: str = _col(filterable=False)
    driver_info: dict = _col(filterable=False)
    start_time: int = _col(filterable=False, detail=True)
    end_time: int = _col(filterable=False, detail=True)
    metadata: dict = _col(filterable=False, detail=True)
    runtime_env: dict = _col(filterable=False, detail=True)
    driver_node_id: str = _col(filterable=False, detail=True)
    driver_exit_code: int = _col(filterable=False, detail=True)


@dataclass
class PlacementGroupState(StateSchema):
    placement_group_id: str = _col()
    name: str = _col()
    creator_job_id: str = _col()
    state: str = _col()
    bundles: list = _col(filterable=False, detail=True)
    is_detached: bool = _col(detail=True)
    stats: dict = _col(filterable=False, detail=True)
    topology_strategy: str = _col(filterable=False, detail=True)
    topology_assignments: Any = _col(filterable=False, detail=True)


# -- the rows -------------------------------------------------------------------------------------


def _runtime():
    runtime = _rt.current_runtime()
    if runtime is None:
        raise ConnectionError("The state API reads the cluster of the running job, and none is running: call "
                              "anyray.init() first (or run the script with `anyray run`).")
    return runtime


def _port_rows(runtime, kind: str) -> list[dict]:
    scheduler = runtime.scheduler
    if not getattr(scheduler, "lists_state", False):
        raise NotImplementedError(f"The {runtime.backend.name!r} backend does not list its {kind}: its scheduler "
                                  f"has no StatePort (anyray.ports.StatePort). list_nodes(), list_jobs() and "
                                  f"list_placement_groups() work on every backend.")
    return scheduler.list_state(kind)


def job_hex(runtime) -> str:
    job = runtime.job_id
    return job.hex() if isinstance(job, bytes) else str(job)


_TASK_TYPES = {"task": "NORMAL_TASK", "actor_creation": "ACTOR_CREATION_TASK", "actor_task": "ACTOR_TASK"}
# Ray's ErrorType of a failed task, by the class of its error (any other: the task's own code raised)
_ERROR_TYPES = {"TaskCancelledError": "TASK_CANCELLED", "ActorDiedError": "ACTOR_DIED",
                "ActorUnschedulableError": "ACTOR_UNSCHEDULABLE_ERROR", "WorkerCrashedError": "WORKER_DIED",
                "OutOfMemoryError": "OUT_OF_MEMORY", "NodeDiedError": "NODE_DIED",
                "TaskUnschedulableError": "TASK_UNSCHEDULABLE_ERROR", "ObjectLostError": "OBJECT_LOST",
                "RuntimeEnvSetupError": "RUNTIME_ENV_SETUP_FAILED",
                "TaskPlacementGroupRemoved": "TASK_PLACEMENT_GROUP_REMOVED"}


def finished_task_rows(runtime, node_id: str | None) -> list[dict]:
    """The tasks this job's event log says ended (each attempt a row), FINISHED or FAILED."""
    rows, attempts = [], {}
    messages = {e["task_id"]: e["message"] for e in runtime.events.error_info()}
    for event in sorted(runtime.events.trace_events(), key=lambda e: e["ts"] + e["dur"]):
        task_id = event["args"].get("task_id", "")
        attempt = attempts[task_id] = attempts.get(task_id, -1) + 1
        error = event["args"].get("error")
        rows.append({"task_id": task_id, "attempt_number": attempt, "name": event["name"],
                     "state": "FAILED" if error else "FINISHED", "type": _TASK_TYPES.get(event["cat"], event["cat"]),
                     "func_or_class_name": event["name"], "worker_pid": event["pid"],
                     "error_type": _ERROR_TYPES.get(error, "TASK_EXECUTION_EXCEPTION") if error else None,
                     "error_message": messages.get(task_id) if error else None,
                     "node_id": node_id, "start_time_ms": int(event["ts"] / 1000),
                     "end_time_ms": int((event["ts"] + event["dur"]) / 1000)})
    return rows


def state_rows(kind: str) -> list[dict]:
    runtime = _runtime()
    job = job_hex(runtime)
    if kind == "nodes":
        return _node_rows(runtime)
    if kind == "jobs":  # every job of the cluster where the backend knows them (StatePort.lists_jobs)
        return runtime.scheduler.list_state("jobs") if getattr(runtime.scheduler, "lists_jobs", False) \
            else [_job_row(runtime, job)]
    if kind == "placement_groups":
        return _group_rows(runtime)
    rows = _port_rows(runtime, kind)
    if kind == "tasks":
        nodes = runtime.scheduler.nodes()
        ended = finished_task_rows(runtime, nodes[0]["NodeID"] if len(nodes) == 1 else None)
        done = {row["task_id"] for row in ended}
        rows = [{"attempt_number": 0, **row} for row in rows if row["task_id"] not in done] + ended
        for row in rows:
            row.setdefault("job_id", job)
    elif kind == "actors":
        for row in rows:
            row.setdefault("job_id", job)
            row.setdefault("ray_namespace", runtime.namespace)
            row.setdefault("repr_name", "")
    elif kind == "workers" and not any(r.get("pid") == os.getpid() for r in rows):
        nodes = runtime.scheduler.nodes()
        node = runtime.backend.info().get("node_id") or (nodes[0]["NodeID"] if len(nodes) == 1 else None)
        rows.append({"worker_id": f"{job}:driver", "pid": os.getpid(), "node_id": node, "worker_type": "DRIVER",
                     "is_alive": True})
    elif kind == "objects":
        rows = [{"object_size": None, "task_status": "FINISHED", "attempt_number": 0,  # what a port leaves out
                 "reference_type": "LOCAL_REFERENCE", "call_site": "disabled",
                 "type": "DRIVER" if r.get("pid") is None else "WORKER", "pid": None, "ip": None, **r} for r in rows]
    return rows


def _heads(runtime) -> dict[str, bool]:
    """{node id: whether it is the head}, where the backend's StatePort lists its nodes (the cluster's)."""
    if not getattr(runtime.scheduler, "lists_state", False):
        return {}
    try:
        return {r["node_id"]: bool(r.get("head")) for r in runtime.scheduler.list_state("nodes") if "node_id" in r}
    except (NotImplementedError, ValueError):  # a backend that lists no nodes of its own
        return {}


def _node_rows(runtime) -> list[dict]:
    nodes = runtime.scheduler.nodes()
    head = runtime.backend.info().get("node_id") if len(nodes) > 1 else None
    heads = _heads(runtime) if len(nodes) > 1 else {}
    rows = []
    for n in nodes:
        alive = bool(n.get("Alive", n.get("alive", True)))
        is_head = "node:__internal_head__" in n.get("Resources", {}) or heads.get(n["NodeID"])
        rows.append({"node_id": n["NodeID"], "node_ip": n.get("NodeManagerAddress", "127.0.0.1"),
                     "is_head_node": bool(is_head if is_head is not None else head is None or n["NodeID"] == head),
                     "state": "ALIVE" if alive else "DEAD", "state_message": None,
                     "node_name": n.get("NodeName") or n.get("NodeManagerAddress", "127.0.0.1"),
                     "resources_total": {k: v for k, v in n.get("Resources", {}).items()}, "labels": {}})
    return rows


def _job_row(runtime, job: str) -> dict:
    info = runtime.backend.info()
    return {"job_id": job, "submission_id": None, "entrypoint": " ".join(sys.argv), "type": "DRIVER",
            "status": "RUNNING", "message": None, "error_type": None,
            "driver_info": {"id": job, "node_ip_address": "127.0.0.1", "pid": str(os.getpid())},
            "driver_node_id": info.get("node_id"), "metadata": {}}


def _group_rows(runtime) -> list[dict]:
    if not getattr(runtime.scheduler, "places_groups", False):
        return []  # a backend without placement groups has none to list
    rows = []
    for group_id, g in runtime.scheduler.placement_group_table(None).items():
        bundles = [{"bundle_id": f"{group_id}:{i}", "node_id": g.get("bundles_to_node_id", {}).get(i) or None,
                    "unit_resources": resources} for i, resources in g.get("bundles", {}).items()]
        rows.append({"placement_group_id": group_id, "name": g.get("name", ""), "creator_job_id": job_hex(runtime),
                     "state": g.get("state"), "bundles": bundles, "is_detached": g.get("is_detached", False),
                     "stats": g.get("stats"), "topology_strategy": g.get("strategy")})
    return rows


# -- filters and the public functions -------------------------------------------------------------


def _convert(value, like):
    if isinstance(value, str) and isinstance(like, bool):
        return value.strip().lower() in ("true", "1", "yes")
    if isinstance(value, str) and isinstance(like, int):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _matches(row: dict, filters: list) -> bool:
    for key, predicate, value in filters:
        if key not in row:
            return False
        have = row[key]
        if isinstance(value, str) and isinstance(have, str):
            same = have.lower() == value.lower()
        else:
            same = have == _convert(value, have)
        if same != (predicate == "="):
            return False
    return True


def _check_filters(filters, schema) -> list[tuple]:
    if filters is None:
        return []
    if not isinstance(filters, (list, tuple)):
        raise TypeError(f"filters must be a list of (key, predicate, value) tuples, e.g. [('state', '=', "
                        f"'ALIVE')]; got {type(filters).__name__}.")
    out = []
    for item in filters:
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise ValueError(f"A filter is a (key, predicate, value) tuple, e.g. ('state', '=', 'ALIVE'); "
                             f"got {item!r}.")
        key, predicate, value = item
        if predicate not in ("=", "!="):
            raise ValueError(f"Unsupported filter predicate {predicate} is given. Available predicates: =, !=.")
        key = str(key).lower()
        columns = schema.filterable_columns()
        if key not in columns:
            raise RayStateApiException(f"The given filter column {key} is not supported. Enter filters with "
                                       f"(key, '=', value) or (key, '!=', value). Supported filter columns: "
                                       f"{sorted(columns)}")
        out.append((key, predicate, value))
    return out


def _conflicting(filters: list) -> bool:
    equal: dict = {}
    for key, predicate, value in filters:
        if predicate == "=":
            if key in equal and equal[key] != value:
                return True
            equal[key] = value
    return False


def _check_limit(limit) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be a positive int (how many rows at most), got {type(limit).__name__} "
                        f"{limit!r}.")
    if limit < 1:
        raise ValueError(f"limit must be a positive int (how many rows at most), got {limit!r}.")
    return limit


def _source_rows(kind: str, address, timeout) -> list[dict]:
    """The rows of this job's backend; or, given a dashboard's address (``http://HOST:8265``, as Ray's state API
    takes it), the rows its JSON API serves."""
    if isinstance(address, str) and address.startswith(("http://", "https://")):
        from anyray.adapters.dashboard.client import list_rows  # only for a dashboard's address

        return list_rows(address, kind, timeout)
    return state_rows(kind)


def _list(kind: str, schema, filters, limit, detail: bool, address=None, timeout=DEFAULT_RPC_TIMEOUT) -> list:
    limit = _check_limit(limit)
    checked = _check_filters(filters, schema)
    if _conflicting(checked):
        return []
    columns = schema.detail_columns() if detail else schema.base_columns()
    out = []
    for row in _source_rows(kind, address, timeout):
        if _matches(row, checked):
            out.append(schema(**{k: v for k, v in row.items() if k in columns}))
            if len(out) >= limit:
                break
    return out


def list_actors(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
                detail: bool = False, raise_on_missing_output: bool = True, _explain: bool = False) -> list[ActorState]:
    """The actors of the cluster (every job's, dead ones included)."""
    return _list("actors", ActorState, filters, limit, detail, address, timeout)


def list_tasks(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
               detail: bool = False, raise_on_missing_output: bool = True, _explain: bool = False) -> list[TaskState]:
    """Tasks and actor calls: those pending or running on any node, and those of this job that ended."""
    return _list("tasks", TaskState, filters, limit, detail, address, timeout)


def list_objects(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
                 detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[ObjectState]:
    """The objects the object stores of the cluster hold."""
    return _list("objects", ObjectState, filters, limit, detail, address, timeout)


def list_nodes(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
               detail: bool = False, raise_on_missing_output: bool = True, _explain: bool = False) -> list[NodeState]:
    """The nodes of the cluster, dead ones included while the backend remembers them."""
    return _list("nodes", NodeState, filters, limit, detail, address, timeout)


def list_jobs(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
              detail: bool = False, raise_on_missing_output: bool = True, _explain: bool = False) -> list[JobState]:
    """Every job of the cluster where the backend keeps them (Ray: every driver's, finished ones SUCCEEDED); on
    the built-in backends the job of this driver (they keep no table of jobs, and have no job submission)."""
    return _list("jobs", JobState, filters, limit, detail, address, timeout)


def list_placement_groups(address=None, filters=None, limit: int = DEFAULT_LIMIT,
                          timeout: int = DEFAULT_RPC_TIMEOUT, detail: bool = False,
                          raise_on_missing_output: bool = True, _explain: bool = False) -> list[PlacementGroupState]:
    """The placement groups of the cluster, removed ones included (none on a backend without groups)."""
    return _list("placement_groups", PlacementGroupState, filters, limit, detail, address, timeout)


def list_workers(address=None, filters=None, limit: int = DEFAULT_LIMIT, timeout: int = DEFAULT_RPC_TIMEOUT,
                 detail: bool = False, raise_on_missing_output: bool = True,
                 _explain: bool = False) -> list[WorkerState]:
    """The processes that run tasks and actors (``WORKER``) and drivers (``DRIVER``)."""
    return _list("workers", WorkerState, filters, limit, detail, address, timeout)


def _id_of(id, what: str) -> str:
    if isinstance(id, str):
        return id
    hex_of = getattr(id, "hex", None)
    if callable(hex_of):
        return hex_of()
    raise TypeError(f"{what} takes the id as a hex str, got {type(id).__name__} {id!r}.")


def get_actor(id: str, address=None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False) -> ActorState | None:
    """The actor with this id (hex), with its detail columns; None if there is none."""
    found = _list("actors", ActorState, [("actor_id", "=", _id_of(id, "get_actor()"))], 10**9, True)
    return found[0] if found else None


def get_task(id, address=None, timeout: int = DEFAULT_RPC_TIMEOUT, _explain: bool = False):
    """The task with this id (hex): its ``TaskState``, a list of them if it ran more than once, or None."""
    found = _list("tasks", TaskState, [("task_id", "=", _id_of(id, "get_task()"))], 10**9, True)
    if not found:
        return None
    return found[0] if len(found) == 1 else found


def summarize_tasks(address=None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True,
                    _explain: bool = False) -> dict:
    """Tasks counted by name and state: ``{"cluster": {"summary": {name: {...}}, "total_tasks": ...}}``."""
    summary: dict = {}
    totals = {"NORMAL_TASK": 0, "ACTOR_TASK": 0, "ACTOR_CREATION_TASK": 0}
    for row in state_rows("tasks"):
        key = row.get("name") or row.get("func_or_class_name")
        entry = summary.setdefault(key, {"func_or_class_name": key, "type": row["type"], "state_counts": {}})
        entry["state_counts"][row["state"]] = entry["state_counts"].get(row["state"], 0) + 1
        if row["type"] in totals:
            totals[row["type"]] += 1
    return {"cluster": {"summary": summary, "total_tasks": totals["NORMAL_TASK"],
                        "total_actor_tasks": totals["ACTOR_TASK"],
                        "total_actor_scheduled": totals["ACTOR_CREATION_TASK"], "summary_by": "func_name"}}


def summarize_actors(address=None, timeout: int = DEFAULT_RPC_TIMEOUT, raise_on_missing_output: bool = True,
                     _explain: bool = False) -> dict:
    """Actors counted by class and state: ``{"cluster": {"summary": {class: {...}}, "total_actors": n}}``."""
    summary: dict = {}
    rows = state_rows("actors")
    for row in rows:
        entry = summary.setdefault(row["class_name"], {"class_name": row["class_name"], "state_counts": {}})
        entry["state_counts"][row["state"]] = entry["state_counts"].get(row["state"], 0) + 1
    return {"cluster": {"summary": summary, "total_actors": len(rows), "summary_by": "class"}}


__all__ = ["ActorState", "JobState", "NodeState", "ObjectState", "PlacementGroupState", "RayStateApiException",
           "StateSchema", "TaskState", "WorkerState", "get_actor", "get_task", "list_actors", "list_jobs",
           "list_nodes", "list_objects", "list_placement_groups", "list_tasks", "list_workers",
           "summarize_actors", "summarize_tasks"]
