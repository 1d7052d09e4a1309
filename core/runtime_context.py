"""``get_runtime_context()``: what the running code may learn of its job, node, task and actor."""

from __future__ import annotations

import os

from .actor import ActorHandle, _methods_of
from .context import TaskContext, current_task, worker_id
from .runtime_env import RuntimeEnv, to_string
from .runtime_env_setup import shown


class RuntimeContext:
    """Ray's ``get_runtime_context()``: ids of the job, node, task and actor, as hex strings.

    It describes the call that was running when it was made (as Ray's does
    for the current call): in the driver, the task and actor methods return
    None, and ``is_canceled`` and ``current_actor`` raise RuntimeError.
    """

    def __init__(self, runtime):
        self._runtime = runtime

    @property
    def _task(self) -> TaskContext | None:
        return current_task.get()

    def get_job_id(self) -> str:
        return self._runtime.job_id.hex()

    def get_node_id(self) -> str | None:
        return self._runtime.backend.info().get("node_id")

    def get_task_id(self) -> str | None:
        return self._task.task_id.hex() if self._task and self._task.task_id else None

    def get_actor_id(self) -> str | None:
        return self._task.actor_id.hex() if self._task and self._task.actor_id else None

    def get_worker_id(self) -> str:
        return worker_id()

    def get_task_name(self) -> str | None:
        """The task's name: the function's (or ``options(name=...)``), ``Class.method`` in an actor."""
        return self._task.name if self._task else None

    def get_task_function_name(self) -> str | None:
        return self._task.name if self._task else None

    def get_actor_name(self) -> str | None:
        """The running actor's name: ``""`` in an unnamed actor, None outside any actor (as Ray)."""
        actor = self._task.actor if self._task else None
        if actor is None:
            return None
        return actor.name or ""

    @property
    def current_actor(self):
        """A handle to the actor this code runs in."""
        actor = self._task.actor if self._task else None
        if actor is None:
            raise RuntimeError("get_runtime_context().current_actor is only available inside an actor's methods.")
        return ActorHandle(actor.actor_id, actor.class_name, _methods_of(actor.cls), actor.native)

    def is_canceled(self) -> bool:
        """Whether ``cancel()`` reached this task or sync actor call, so it can stop early and clean up."""
        if self._task is None:
            raise RuntimeError("get_runtime_context().is_canceled() is only available inside a task or actor call.")
        if self._task.actor is not None and self._task.actor.is_async:
            raise RuntimeError("is_canceled() is not supported in an async actor: a cancelled call there gets "
                               "asyncio.CancelledError.")
        return self._task.cancelled

    @property
    def gcs_address(self) -> str | None:
        """The cluster's address (what ``init(address=...)`` takes); None for a single-machine backend."""
        return self._runtime.backend.info().get("address")

    def get_assigned_resources(self) -> dict[str, float]:
        return dict(self._task.resources) if self._task else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        return {"GPU": [str(g) for g in self._task.gpu_ids] if self._task else []}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        return bool(self._task and self._task.restarted)

    @property
    def runtime_env(self):
        """The runtime_env this code runs in (a ``RuntimeEnv``): the task's or actor's, merged with the
        job's; in the driver, the job's (``init(runtime_env=...)``)."""
        return RuntimeEnv(_validate=False, **shown(self._runtime))

    def get_runtime_env_string(self) -> str:
        """:attr:`runtime_env` as JSON text, as Ray's."""
        return to_string(shown(self._runtime))

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
