"""The code that runs one task or actor call inside any worker.

Every backend calls this, whatever process or thread it runs in: it loads
the arguments (resolving top-level ObjectRefs), calls the user's code,
splits ``num_returns``, retries application errors as ``retry_exceptions``
says, wraps errors into ``TaskError`` and serializes the results. A backend
only moves the returned ``SerializedObject``s into its store.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

from . import generators, serialization
from .context import TaskContext, current_task
from .events import JobEvents, TaskRecord
from .exceptions import AnyrayError, TaskCancelledError, TaskError, WorkerCrashedError
from .object_ref import ObjectRef
from .policy import allows_another
from .specs import RemoteFailure

Fetch = Callable[[Sequence[ObjectRef]], list]  # refs -> deserialized values (failures not raised)

_NO_ARGUMENTS = serialization.NO_ARGUMENTS
_PLAIN_VALUES = serialization.PLAIN_TYPES  # values returned as they are (no generator, no coroutine)
_Coroutine = types.CoroutineType
_now = time.time
_thread_id = threading.get_ident
_pid_now = [os.getpid()]  # drawn again in a forked child
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _pid_now.__setitem__(0, os.getpid()))


def load_arguments(args_blob: serialization.SerializedObject, deps: Sequence[ObjectRef], fetch: Fetch, name: str):
    """Return ``(args, kwargs)``, or the ``RemoteFailure`` of the first dependency that failed, or of
    the arguments' own loading (a class that does not import here, a ``__reduce__`` that raises)."""
    try:
        return _load_arguments(args_blob, deps, fetch)
    except Exception as exc:  # noqa: BLE001 - the caller gets it as the task's error
        return failure_for(exc, name)


def _load_arguments(args_blob: serialization.SerializedObject, deps: Sequence[ObjectRef], fetch: Fetch):
    args, kwargs = serialization.deserialize(args_blob)
    if not deps:
        return args, kwargs
    values = fetch(deps)
    for value in values:
        if type(value) is RemoteFailure:
            return value
    resolved = {ref: value for ref, value in zip(deps, values)}
    args = tuple(resolved[a] if type(a) is ObjectRef else a for a in args)
    kwargs = {k: resolved[v] if type(v) is ObjectRef else v for k, v in kwargs.items()}
    return args, kwargs


def split_returns(value: Any, num_returns: int, name: str, target: Callable | None = None) -> list:
    if type(value) is types.GeneratorType and generators.is_generator_function(target):
        return generators.first_returns(value, num_returns, name, failure_for)  # a static num_returns
    if num_returns == 1:
        return [value]
    if num_returns == 0:
        return []
    try:
        values = list(value)
    except TypeError:
        values = None
    if values is None or len(values) != num_returns:
        got = "a non-iterable" if values is None else f"{len(values)} values"
        raise ValueError(f"{name} declares num_returns={num_returns} but returned {got}; "
                         f"return a tuple of exactly {num_returns} values.")
    return values


def failure_for(exc: BaseException, name: str) -> RemoteFailure:
    if isinstance(exc, AnyrayError) and not isinstance(exc, TaskError):
        return RemoteFailure(exc)  # cancelled, actor died...: keep the system error's type
    if isinstance(exc, TaskError):
        return RemoteFailure(exc)  # a nested get raised: pass the original task's error on
    return RemoteFailure(TaskError.from_exception(name, exc, os.getpid()).as_instanceof_cause())


def serialize_outputs(values: list, name: str, num_returns: int) -> list[serialization.SerializedObject]:
    out = []
    for value in values:
        try:
            out.append(serialization.serialize(value, what=f"the return value of {name}"))
        except serialization.SerializationError as exc:
            failure = RemoteFailure(TaskError.from_exception(name, exc, os.getpid()).as_instanceof_cause())
            return [serialize_failure(failure)] * num_returns
    return out


def encode_item(name: str) -> Callable[[Any], serialization.SerializedObject]:
    """How a generator's items are serialized: a value, or a failure (its error, or one saying the value
    could not be serialized)."""
    def encode(value: Any) -> serialization.SerializedObject:
        if type(value) is RemoteFailure:
            return serialize_failure(value)
        try:
            return serialization.serialize(value, what=f"a value {name} yielded")
        except serialization.SerializationError as exc:
            return serialize_failure(failure_for(exc, name))
    return encode


def serialize_failure(failure: RemoteFailure) -> serialization.SerializedObject:
    try:
        obj = serialization.serialize(failure)
        serialization.deserialize(obj)  # an exception whose __init__ differs from its args pickles but cannot load
        return obj
    except Exception:
        err = failure.error
        # The user's exception does not round-trip: keep its text, drop the object.
        if isinstance(err, TaskError):
            text_only = TaskError(err.function_name, err.traceback_str, None, err.pid)
            return serialization.serialize(RemoteFailure(text_only))
        return serialization.serialize(RemoteFailure(AnyrayError(str(err))))


def _should_retry(exc: BaseException, retry_exceptions, max_retries: int, retried: int) -> bool:
    if not allows_another(max_retries, retried) or isinstance(exc, AnyrayError):
        return False
    if retry_exceptions is True:
        return True
    if isinstance(retry_exceptions, tuple):
        return isinstance(exc, retry_exceptions)
    return False


def run_in_place(call: Call, args_blob, deps, fetch: Fetch, max_retries: int) -> list:
    """Run a task where its worker process cannot end (a thread of the driver, a shared engine's worker).

    A ``sys.exit()`` in it counts as its worker crashing, as in Ray: it runs again while ``max_retries``
    allows, then its results are ``WorkerCrashedError``."""
    crashes = 0
    while True:
        try:
            return call.run(args_blob, deps, fetch)
        except SystemExit as exc:
            if allows_another(max_retries, crashes):
                crashes += 1
                continue
            error = WorkerCrashedError(f"The worker running {call.name} exited (it called sys.exit({exc.code!r})); "
                                       f"its retries (max_retries) are used up.")
            return [serialize_failure(RemoteFailure(error))] * call.num_returns


class Call:
    """One invocation: what to call, how to name it, and where to report it."""

    __slots__ = ("target", "name", "kind", "ctx", "num_returns", "retry_exceptions", "max_retries", "events",
                 "stream")

    # ``retry_exceptions`` is False, True, a tuple of classes, or those classes as
    # ``serialization.portable_classes`` sent them (loaded when the call runs). ``stream``: a
    # ``generators.StreamSpec`` when the call's values stream (then ``num_returns`` is 1), else None.

    def __init__(self, target: Callable, name: str, kind: str, ctx: TaskContext, num_returns: int,
                 events: JobEvents, retry_exceptions=False, max_retries: int = 0,
                 stream: generators.StreamSpec | None = None):
        self.target = target
        self.name = name
        self.kind = kind
        self.ctx = ctx
        self.num_returns = num_returns
        self.retry_exceptions = retry_exceptions
        self.max_retries = max_retries
        self.events = events
        self.stream = stream

    def _producer(self) -> generators.Producer:
        return generators.Producer(self.stream, self.name, encode_item(self.name))

    def _record(self, start: float, failure: RemoteFailure | None) -> None:
        task_id = self.ctx.task_id
        error_type = message = None
        if failure is not None:
            error = failure.error
            shown = error.cause if isinstance(error, TaskError) and error.cause is not None else error
            error_type, message = type(shown).__name__, str(error)
        self.events.task_finished(TaskRecord(task_id.hex() if task_id else "", self.name, self.kind, start, _now(),
                                             _pid_now[0], _thread_id(), error_type, message))

    def invoke(self, args_blob, deps, fetch: Fetch):
        """Call the target in this thread; return the list of values or a ``RemoteFailure``.

        A ``SystemExit`` the target raises (``sys.exit()``, ``exit_actor()``) is raised on: the
        backend ends what runs the call, as Ray ends the worker process."""
        token = current_task.set(self.ctx)
        start = _now()
        try:
            retry_exceptions = self.retry_exceptions
            if type(retry_exceptions) is bytes:
                try:
                    retry_exceptions = serialization.load_classes(retry_exceptions)
                except Exception as exc:  # noqa: BLE001 - e.g. a class whose module does not import here
                    return failure_for(exc, self.name)
            if not deps and getattr(args_blob, "data", None) == _NO_ARGUMENTS:  # no arguments: nothing to load
                args, kwargs = (), {}
            else:
                loaded = load_arguments(args_blob, deps, fetch, self.name)
                if type(loaded) is RemoteFailure:
                    return loaded
                args, kwargs = loaded
            retried = 0
            while True:
                try:
                    value = self.target(*args, **kwargs)
                    if self.stream is not None:  # each value goes to the store as it is yielded
                        if inspect.isasyncgen(value):
                            import asyncio

                            values = [asyncio.run(generators.drive_async(value, self._producer(), failure_for))]
                        else:
                            values = [generators.drive(value, self._producer(), failure_for)]
                    elif self.num_returns == 1 and type(value) in _PLAIN_VALUES:  # split_returns' common case
                        values = [value]
                    else:
                        if isinstance(value, _Coroutine):  # an ``async def`` task runs on a loop of its own
                            import asyncio

                            value = asyncio.run(value)
                        values = split_returns(value, self.num_returns, self.name, self.target)
                except BaseException as exc:  # noqa: BLE001 - everything the user raised is reported
                    if isinstance(exc, KeyboardInterrupt) and self.ctx.inline:
                        raise
                    if isinstance(exc, SystemExit):
                        raise  # the process running it exits: the backend ends the worker or the actor
                    if isinstance(exc, KeyboardInterrupt):
                        exc = TaskCancelledError(f"{self.name} was interrupted ({type(exc).__name__}).")
                    if _should_retry(exc, retry_exceptions, self.max_retries, retried):
                        retried += 1
                        continue
                    failure = failure_for(exc, self.name)
                    self._record(start, failure)
                    return failure
                if self.ctx.cancelled and self.ctx.actor is not None:
                    # A sync actor call cannot be interrupted: cancel() flags it (is_canceled()), and what
                    # it returns is dropped, as in Ray.
                    failure = RemoteFailure(TaskCancelledError(f"{self.name} was cancelled."))
                    self._record(start, failure)
                    return failure
                self._record(start, None)
                return values
        finally:
            current_task.reset(token)

    def run(self, args_blob, deps, fetch: Fetch) -> list[serialization.SerializedObject]:
        """Call the target in this thread and serialize what it returned or raised."""
        result = self.invoke(args_blob, deps, fetch)
        if type(result) is RemoteFailure:
            return [serialize_failure(result)] * self.num_returns
        if len(result) == 1 and type(result[0]) in _PLAIN_VALUES:  # a scalar serializes without fail
            return [serialization.serialize(result[0])]
        return serialize_outputs(result, self.name, self.num_returns)

    async def run_async(self, args_blob, deps, fetch: Fetch,
                        loop_executor=None) -> list[serialization.SerializedObject]:
        """Run a coroutine method on the running event loop (async actors)."""
        import asyncio

        current_task.set(self.ctx)  # each asyncio task has its own context copy
        start = time.time()
        if deps:
            loaded = await asyncio.get_running_loop().run_in_executor(
                loop_executor, load_arguments, args_blob, deps, fetch, self.name)
        else:
            loaded = load_arguments(args_blob, deps, fetch, self.name)
        if type(loaded) is RemoteFailure:
            return [serialize_failure(loaded)] * self.num_returns
        args, kwargs = loaded
        try:
            value = self.target(*args, **kwargs)
            if self.stream is not None:
                values = [await generators.drive_async(value, self._producer(), failure_for, loop_executor)]
                self._record(start, None)
                return serialize_outputs(values, self.name, self.num_returns)
            if inspect.isawaitable(value):
                value = await value
            values = split_returns(value, self.num_returns, self.name, self.target)
        except asyncio.CancelledError:
            failure = RemoteFailure(TaskCancelledError(f"{self.name} was cancelled."))
            self._record(start, failure)
            return [serialize_failure(failure)] * self.num_returns
        except Exception as exc:
            failure = failure_for(exc, self.name)
            self._record(start, failure)
            return [serialize_failure(failure)] * self.num_returns
        self._record(start, None)
        return serialize_outputs(values, self.name, self.num_returns)
