"""Which task, actor and resources the running code belongs to.

Held in a ``ContextVar`` so that threads of a pool and asyncio tasks of an
async actor each see their own call.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class ActorInfo(NamedTuple):
    """What code running inside an actor may learn of it: ids, names, and how to make a handle."""

    actor_id: bytes
    class_name: str
    name: str | None       # the name given with .options(name=...), None for an unnamed actor
    cls: type              # the user's class
    is_async: bool = False
    native: Any = None     # the backend's own handle to this actor, if it has one


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
    actor: ActorInfo | None = None  # set for actor calls and the constructor
    cancelled: bool = False  # cancel() reached this call: its result is dropped for TaskCancelledError
    placement: tuple | None = None  # (group id, capture child tasks) of the placement group it runs in


def worker_id() -> str:
    """This process's worker id as hex: random, drawn again in a forked child."""
    global _worker_pid, _worker_id
    if _worker_pid != os.getpid():
        _worker_pid, _worker_id = os.getpid(), os.urandom(14).hex()
    return _worker_id


_worker_pid = -1
_worker_id = ""
worker_process = False  # a worker process whose output goes to the driver (backend_kit.mark_worker_process)
worker_ip: str | None = None  # its node's address, when it said it


current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("anyray_task", default=None)
