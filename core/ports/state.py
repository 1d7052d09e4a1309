"""The StatePort: what the cluster runs and holds, listed for ``anyray.util.state`` and ``anyray list``."""

from __future__ import annotations

from typing import ClassVar

#: What ``list_state`` lists.
STATE_KINDS = ("actors", "tasks", "objects", "workers")


class StatePort:
    """Rows of the cluster's state, as Ray's state API has them. Optional: a scheduler declares
    ``lists_state = True``; the runtime reads the flag once and never calls :meth:`list_state` otherwise.

    One row is a dict per actor, task, object or worker of every node of the cluster (every job's), with
    Ray's field names where the backend knows the value (the core fills in the rest, and adds the tasks
    the job's event log says finished):

    - ``actors``: ``actor_id`` (hex), ``class_name``, ``state`` ("PENDING_CREATION", "ALIVE",
      "RESTARTING" or "DEAD"), ``name`` ("" if none), ``pid``, ``node_id``, ``job_id``, ``ray_namespace``,
      ``num_restarts``, ``required_resources``, ``death_cause``, ``is_detached``;
    - ``tasks`` (those not finished): ``task_id``, ``name``, ``state`` (Ray's: "PENDING_ARGS_AVAIL",
      "PENDING_NODE_ASSIGNMENT", "SUBMITTED_TO_WORKER", "RUNNING", ...), ``type`` ("NORMAL_TASK",
      "ACTOR_TASK"), ``func_or_class_name``, ``actor_id``, ``job_id``, ``node_id``, ``worker_pid``,
      ``required_resources``; a backend whose engine keeps ended tasks (Ray) lists them too, with their
      ``attempt_number``, and the core replaces a row the job's event log has a record of by that record;
    - ``objects``: ``object_id``, ``object_size``, ``node_id``, ``shared_memory`` (held in a node's
      shared memory), and where the backend knows them Ray's ``reference_type``, ``task_status``, ``type``,
      ``pid``, ``ip`` (the core fills in the others);
    - ``workers``: ``worker_id``, ``pid``, ``node_id``, ``worker_type`` ("WORKER" or "DRIVER"),
      ``is_alive``.

    A kind the backend cannot list raises ``NotImplementedError`` saying why. A backend may also list
    ``nodes`` (rows with ``node_id`` and ``head``: whether it is the head node); the others raise
    ``ValueError`` for it, and ``nodes()`` tells the rest. A backend that keeps every job of its cluster
    declares ``lists_jobs = True`` and lists ``jobs`` (Ray's ``JobState`` rows, this driver's job under
    its anyray id); the others' ``list_jobs`` shows the driver's own job.
    """

    lists_state: ClassVar[bool] = False
    lists_jobs: ClassVar[bool] = False

    def list_state(self, kind: str) -> list[dict]:
        """Rows of ``kind`` (one of ``STATE_KINDS``) across the cluster."""
        raise NotImplementedError(f"{type(self).__name__} declares lists_state = False: this backend does not "
                                  f"list its {kind}.")
