"""What the local backend lists for ``anyray.util.state`` (the StatePort): its actors, the tasks and
actor calls not finished, the objects of its store, and its one process (the driver). Every row is of
the one job the backend runs (the core adds its ``job_id``)."""

from __future__ import annotations

import os

from anyray.backend_kit.actor_host import live_calls

ACTOR_STATES = {"pending": "PENDING_CREATION", "alive": "ALIVE", "restarting": "RESTARTING", "dead": "DEAD"}
TASK_STATES = {"waiting": "PENDING_ARGS_AVAIL", "queued": "PENDING_NODE_ASSIGNMENT",
               "dispatched": "SUBMITTED_TO_WORKER", "running": "RUNNING"}


def list_state(kind: str, node_id: str, actors: dict, tasks: dict, store) -> list[dict]:
    pid = os.getpid()
    if kind == "actors":
        return [{"actor_id": a.spec.actor_id.hex(), "class_name": a.spec.cls.name,
                 "state": ACTOR_STATES.get(a.state, a.state.upper()), "name": a.spec.options.get("name") or "",
                 "pid": pid, "num_restarts": a.restarts, "node_id": node_id,
                 "ray_namespace": a.spec.namespace, "required_resources": dict(a.spec.resources),
                 "death_cause": a.cause or None, "is_detached": a.spec.options.get("lifetime") == "detached"}
                for a in list(actors.values())]
    if kind == "tasks":
        rows = [{"task_id": t.spec.task_id.hex(), "name": t.spec.name,
                 "state": TASK_STATES.get(t.state, t.state.upper()), "type": "NORMAL_TASK",
                 "func_or_class_name": t.spec.function.name, "actor_id": None,
                 "worker_pid": pid, "node_id": node_id, "required_resources": dict(t.spec.resources)}
                for t in {id(t): t for t in list(tasks.values())}.values() if t.state != "done"]
        for actor in list(actors.values()):
            rows += [{"task_id": spec.task_id.hex(), "name": spec.name, "state": state, "type": "ACTOR_TASK",
                      "func_or_class_name": spec.name, "actor_id": actor.spec.actor_id.hex(),
                      "worker_pid": pid, "node_id": node_id, "required_resources": {}}
                     for spec, state in live_calls(actor)]
        return rows
    if kind == "objects":
        return [{"object_id": oid.hex(), "object_size": obj.nbytes, "shared_memory": False, "node_id": node_id}
                for oid, obj in store.entries()]
    if kind == "workers":
        return [{"worker_id": f"{node_id}:driver", "pid": pid, "node_id": node_id, "worker_type": "DRIVER",
                 "is_alive": True}]
    raise ValueError(f"Nothing to list called {kind!r}; pick actors, tasks, objects or workers.")
