"""Which task, actor and resources the running code belongs to.

Held in a ``ContextVar`` so that threads of a pool and asyncio tasks of an
async actor each see their own call.
"""

from __future__ import annotations

import contextvars
import os
import threading
from dataclasses import dataclass, field


@dataclass(slots=True)
class TaskContext:
    task_id: bytes | None = None
    actor_id: bytes | None = None
    name: str = ""
    resources: dict[str, float] = field(default_factory=dict)
    gpu_ids: list = field(default_factory=list)
    restarted: bool = False
    blocked: bool = False  # inside get/wait with its CPUs lent out
    lease: object = None   # the scheduler's handle for what this task holds
    inline: bool = False   # run by a caller that waits for it: Ctrl-C interrupts the caller, not just the task


current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("anyray_task", default=None)


class RuntimeContext:
    """Ray's ``get_runtime_context()``: ids of the job, node, task and actor, as hex strings."""

    def __init__(self, runtime):
        self._runtime = runtime
        self._task = current_task.get()

    def get_job_id(self) -> str:
        return self._runtime.job_id.hex()

    def get_node_id(self) -> str | None:
        return self._runtime.backend.info().get("node_id")

    def get_task_id(self) -> str | None:
        return self._task.task_id.hex() if self._task and self._task.task_id else None

    def get_actor_id(self) -> str | None:
        return self._task.actor_id.hex() if self._task and self._task.actor_id else None

    def get_worker_id(self) -> str:
        return f"{os.getpid()}:{threading.get_ident()}"

    def get_assigned_resources(self) -> dict[str, float]:
        return dict(self._task.resources) if self._task else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(g) for g in self._task.gpu_ids] if self._task else []}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(self._task and self._task.restarted)

    @property
    def namespace(self) -> str:
        return self._runtime.namespace

    @property
    def job_id(self) -> str:
        return self.get_job_id()

    @property
    def node_id(self) -> str | None:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    @property
    def actor_id(self) -> str | None:
        return self.get_actor_id()

    @property
    def pid(self) -> int:
        return os.getpid()

    def get(self) -> dict:
        return {"job_id": self.job_id, "node_id": self.node_id, "task_id": self.task_id,
                "actor_id": self.actor_id, "namespace": self.namespace, "pid": self.pid}
