"""The StatePort on Ray: actors and workers from Ray's GCS tables (which need no dashboard; read the way
``ray._private.state`` reads them).

Ray serves its tasks and objects only through the state API server of its dashboard (``ray[default]``:
aiohttp and friends), which the plugin does not require; those two kinds raise ``NotImplementedError``
saying so.
"""

from __future__ import annotations

import ray

from .actors import _registry


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


class RayState:
    """The StatePort (``anyray.ports.StatePort``) of the Ray scheduler."""

    lists_state = True

    def list_state(self, kind: str) -> list[dict]:
        if kind == "actors":
            return _actor_rows()
        if kind == "workers":
            return _worker_rows()
        raise NotImplementedError(
            f"The ray backend does not list {kind}: Ray serves them only through its dashboard's state API "
            f"server (ray.util.state with `pip install 'ray[default]'` and include_dashboard=True); use Ray's "
            f"own ray.util.state there.")
