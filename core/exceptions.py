"""Exceptions raised by anyray, with Ray's names kept as aliases.

Every error a backend meets is translated into one of these at the adapter
boundary (chained with ``raise ... from``), so user code catches the same
types whatever runs it.
"""

from __future__ import annotations

import traceback

__all__ = [
    "AnyrayError",
    "TaskError",
    "GetTimeoutError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "WorkerCrashedError",
    "ObjectLostError",
    "OwnerDiedError",
    "ObjectFetchTimedOutError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectReconstructionFailedLineageEvictedError",
    "TaskCancelledError",
    "ObjectStoreFullError",
    "NodeDiedError",
    "OutOfMemoryError",
    "RaySystemError",
    "TaskUnschedulableError",
    "TaskPlacementGroupRemoved",
    "RuntimeEnvSetupError",
    "ObjectRefStreamEndOfStreamError",
    "BackendNotFoundError",
    "InfeasibleTaskWarning",
    "RayError",
    "RayTaskError",
    "RayActorError",
]


class AnyrayError(Exception):
    """Base of every error anyray raises on its own behalf."""


class TaskError(AnyrayError):
    """A remote task or actor method raised.

    ``str()`` holds the remote traceback. The instance raised by ``get`` is
    also an instance of the user's exception class (see :meth:`as_instanceof_cause`),
    so ``except ValueError`` catches a remote ``ValueError``.
    """

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None = None,
                 pid: int | None = None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        # Not super(): in the dual class the next __init__ is the user's, with its own signature.
        Exception.__init__(self, function_name, traceback_str)

    @classmethod
    def from_exception(cls, function_name: str, exc: BaseException, pid: int | None = None) -> TaskError:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return cls(function_name, text, exc, pid)

    def __str__(self) -> str:
        where = f" (pid={self.pid})" if self.pid is not None else ""
        return f"{self.function_name}(){where} raised:\n{self.traceback_str.rstrip()}"

    def as_instanceof_cause(self) -> TaskError:
        """Return an error that is both a TaskError and an instance of the cause's class."""
        cause_cls = type(self.cause) if self.cause is not None else None
        if cause_cls is None or issubclass(cause_cls, TaskError) or not _subclassable(cause_cls):
            return self
        dual = _dual_class(cause_cls)
        err = _bare_instance(dual)
        if err is None:
            return self
        err.__dict__.update(getattr(self.cause, "__dict__", {}))  # the cause's own fields, as in Ray
        TaskError.__init__(err, self.function_name, self.traceback_str, self.cause, self.pid)
        err.args = self.cause.args if self.cause is not None else err.args
        return err

    def __reduce__(self):
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, self.pid,
                                      type(self) is not TaskError))


_DUAL_CLASSES: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    try:
        type("_Probe", (TaskError, cls), {})
    except TypeError:
        return False
    return True


def _bare_instance(dual: type):
    """An instance of ``dual`` made without calling the user's ``__new__``/``__init__`` (their signatures
    are not ours), or None when the class cannot be instantiated that way.

    ``dual.__new__(dual)`` resolves to the cause's ``__new__``; built-ins with their own allocator
    (``MemoryError``'s free list, for one) refuse to build a subclass that mixes in another base and
    say to use ``BaseException.__new__``, which gives an equally complete instance.
    """
    try:
        return dual.__new__(dual)
    except TypeError:
        pass
    try:
        return BaseException.__new__(dual)
    except TypeError:
        return None


def _dual_class(cause_cls: type) -> type:
    dual = _DUAL_CLASSES.get(cause_cls)
    if dual is None:
        dual = type(
            f"TaskError({cause_cls.__name__})",
            (TaskError, cause_cls),
            {"__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__,
             "__module__": __name__, "__init__": TaskError.__init__},
        )
        _DUAL_CLASSES[cause_cls] = dual
    return dual


def _rebuild_task_error(function_name, traceback_str, cause, pid, dual):
    err = TaskError(function_name, traceback_str, cause, pid)
    return err.as_instanceof_cause() if dual else err


class GetTimeoutError(AnyrayError, TimeoutError):
    """``get`` did not see its objects within the timeout."""


class RayActorError(AnyrayError):
    """An actor call could not run: the actor is dead, or unavailable for now (Ray's base of both)."""


class ActorDiedError(RayActorError):
    """The actor is dead (killed, crashed, exited, or failed in its constructor)."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (restarting)."""


class ActorUnschedulableError(AnyrayError):
    """The actor can never be placed (e.g. its placement group was removed)."""


class TaskUnschedulableError(AnyrayError):
    """The task can never be placed (e.g. its placement group was removed)."""


class TaskPlacementGroupRemoved(AnyrayError):
    """The placement group a task, an actor or a ``pg.ready()`` ref waited for was removed."""


class WorkerCrashedError(AnyrayError):
    """The process running a task died before the task finished, and retries ran out."""


class ObjectLostError(AnyrayError):
    """Every copy of an object is gone (its node died or it was freed)."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (its driver or the worker that made it) died."""


class ObjectFetchTimedOutError(ObjectLostError):
    """The object could not be fetched from the node holding it in time."""


class ObjectReconstructionFailedError(ObjectLostError):
    """Every copy of an object is gone and re-running the task that made it is not possible: ``reason``
    says why, as Ray's ``ErrorType`` name (``OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED``,
    ``..._RETRIES_DISABLED``, ``..._LINEAGE_EVICTED``, ``..._PUT``)."""

    def __init__(self, message: str = "", reason: str | None = None):
        super().__init__(message, reason)  # args: what pickling rebuilds it from
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectReconstructionFailedError):
    """The task that made the lost object has been run ``max_retries`` more times already (Ray 2.x's name
    before its single ``ObjectReconstructionFailedError`` with a ``reason``; caught by either)."""


class ObjectReconstructionFailedLineageEvictedError(ObjectReconstructionFailedError):
    """The description of the task that made the lost object was dropped to bound the memory lineage takes
    (``RAY_max_lineage_bytes``)."""


class TaskCancelledError(AnyrayError):
    """The task was cancelled with ``anyray.cancel``."""


class ObjectStoreFullError(AnyrayError):
    """The object store has no room for a new object."""


class NodeDiedError(AnyrayError):
    """The node a task or object lived on died."""


class OutOfMemoryError(AnyrayError):
    """The task's worker was killed because its node ran out of memory, and retries ran out."""


class RaySystemError(AnyrayError):
    """The runtime itself failed (not the user's code)."""


class RuntimeEnvSetupError(AnyrayError):
    """The task's or actor's runtime environment could not be set up (Ray's type: ``error_message`` says
    why, ``str()`` starts with "Failed to set up runtime environment.")."""

    def __init__(self, error_message: str | None = None):
        super().__init__(error_message)  # args: what pickling rebuilds it from
        self.error_message = error_message

    def __str__(self) -> str:
        if self.error_message:
            return f"Failed to set up runtime environment.\n{self.error_message}"
        return "Failed to set up runtime environment."


class ObjectRefStreamEndOfStreamError(AnyrayError):
    """A generator's stream has no more items."""


class BackendNotFoundError(AnyrayError, LookupError):
    """No installed backend has the requested name."""


class InfeasibleTaskWarning(UserWarning):
    """A task or actor asks for resources no node has; it waits until one that has them joins."""


RayError = AnyrayError
RayTaskError = TaskError


class ActorNameTaken(Exception):  # noqa: N818 - a signal between a backend and the core, never seen by users
    """Raised by a backend's ``create_actor`` when ``get_if_exists`` lost the race for the actor's name.

    ``handle`` is the ``ActorHandle`` of the actor that took the name first; the core returns it to the
    caller of ``.remote()``. Not exported from ``anyray``: users never see it."""

    def __init__(self, handle):
        super().__init__(handle)
        self.handle = handle
