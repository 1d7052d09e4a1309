"""Task, actor and actor-call specs: what the core hands a Scheduler.

A spec is built once per call by the core, after validation, and is the
whole description of the work: backends never look at the user's original
arguments, only at ``args`` (the pickled ``(args, kwargs)``) and ``deps``
(the top-level ObjectRef arguments the work must wait for).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .context import ActorInfo
from .object_ref import ObjectRef
from .serialization import SerializedObject


@dataclass(slots=True, eq=False)
class FunctionDescriptor:
    """A remote function or actor class, exported once per job under ``function_id``."""

    function_id: bytes
    name: str                 # qualified name, for errors, timelines and warnings
    target: Callable | type   # the function or class itself


@dataclass(slots=True, eq=False)
class TaskSpec:
    task_id: bytes
    function: FunctionDescriptor
    args: SerializedObject
    deps: list[ObjectRef]
    returns: list[ObjectRef]
    resources: dict[str, float]
    options: dict[str, Any]      # validated task options (max_retries, retry_exceptions, ...)
    parent_task_id: bytes | None = None
    name: str = ""

    @property
    def max_retries(self) -> int:
        return self.options["max_retries"]


@dataclass(slots=True, eq=False)
class ActorSpec:
    actor_id: bytes
    cls: FunctionDescriptor
    args: SerializedObject
    deps: list[ObjectRef]
    resources: dict[str, float]
    options: dict[str, Any]      # validated actor options
    namespace: str
    is_async: bool
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def info(self, native=None) -> ActorInfo:
        """What the actor's own calls see of it (``get_runtime_context().current_actor`` and names)."""
        return ActorInfo(self.actor_id, self.cls.name, self.options.get("name"), self.cls.target, self.is_async,
                         native)

    @property
    def max_concurrency(self) -> int:
        value = self.options["max_concurrency"]
        if value is None:
            return 1000 if self.is_async else 1
        return value


@dataclass(slots=True, eq=False)
class ActorTaskSpec:
    task_id: bytes
    actor_id: bytes
    method_name: str
    args: SerializedObject
    deps: list[ObjectRef]
    returns: list[ObjectRef]
    caller_id: bytes
    seq: int
    options: dict[str, Any]
    name: str = ""


class RemoteFailure:
    """The stored value of a task that failed; ``get`` raises ``error``."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error

    def __reduce__(self):
        return RemoteFailure, (self.error,)
