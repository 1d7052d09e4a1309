"""Generators on Ray: anyray's generator tasks and methods run as Ray generator tasks and methods.

Worker side: the Ray task (or the actor host's ``anyray_stream`` method) is a
generator that runs the user's generator and yields each value as a
:data:`~anyray_ray.transport.Payload` as soon as it is produced, so Ray
stores it at once and streams it (``num_returns="streaming"``) or collects
it (``"dynamic"``). An error of the user's code becomes one last payload
holding the failure, so the ref after the last value raises it and the
stream then ends, as in Ray. ``SystemExit`` (a crash) and ``KeyboardInterrupt``
(Ray's cancel) are left to Ray: it retries the task within ``max_retries``
without repeating values already streamed, or ends the stream with its error.
A static ``num_returns=N`` takes the first N values (more are dropped, fewer
fail the missing refs with a ValueError), as Ray does.

Driver side: :class:`RayObjectRefGenerator` wraps Ray's ``ObjectRefGenerator``
and gives anyray ObjectRefs whose ``native`` is Ray's ref; a Ray
``DynamicObjectRefGenerator`` read from the store becomes anyray's
(:func:`dynamic_payload`).
"""

from __future__ import annotations

import contextvars
import inspect
import itertools

import ray

from anyray import DynamicObjectRefGenerator, ObjectRefGenerator
from anyray.backend_kit import (
    Call,
    ObjectRef,
    RemoteFailure,
    SerializedObject,
    failure_for,
    serialize,
    serialize_failure,
)
from anyray.exceptions import TaskCancelledError

from .errors import translate

# -- worker side -------------------------------------------------------------------


def _failure_payload(failure: RemoteFailure):
    from .transport import pack

    return pack(serialize_failure(failure))


def _value_payload(value, name: str):
    """The payload of one yielded value, and whether it is a failure (a value that does not pickle)."""
    from .transport import pack

    try:
        return pack(serialize(value, what=f"a value yielded by {name}")), False
    except TypeError as exc:  # anyray's SerializationError
        return _failure_payload(failure_for(exc, name)), True


class _Started:
    """A generator the user's function returned, and the context (the task's) its steps run in."""

    __slots__ = ("values", "context")

    def __init__(self, values, context):
        self.values = values
        self.context = context


def _start(call: Call, args_blob, deps, fetch):
    """Load the arguments and call the generator function as ``call`` would (its context set): the
    ``_Started`` generator, or the ``RemoteFailure`` of the arguments or of the call."""
    target = call.target

    def start(*args, **kwargs):
        return _Started(target(*args, **kwargs), contextvars.copy_context())

    result = Call(start, call.name, call.kind, call.ctx, 1, call.events).invoke(args_blob, deps, fetch)
    return result if type(result) is RemoteFailure else result[0]


def stream(call: Call, args_blob, deps, fetch):
    """Run the generator function of ``call``; yield one payload per value it yields (then one for its error)."""
    started = _start(call, args_blob, deps, fetch)
    if type(started) is RemoteFailure:
        yield _failure_payload(started)
        return
    yield from stream_started(started, call.name)


async def astream(call: Call, args_blob, deps, fetch):
    """:func:`stream` on an event loop (async actors): the method may be an async or a plain generator."""
    import asyncio

    started = _start(call, args_blob, deps, fetch)  # Ray has resolved the arguments: nothing blocks here
    if type(started) is RemoteFailure:
        yield _failure_payload(started)
        return
    if not inspect.isasyncgen(started.values):
        for payload in stream_started(started, call.name):
            yield payload
        return
    loop = asyncio.get_running_loop()
    values = started.values
    while True:
        try:
            value = await loop.create_task(values.__anext__(), context=started.context)
        except StopAsyncIteration:
            return
        except asyncio.CancelledError:
            yield _failure_payload(RemoteFailure(TaskCancelledError(f"{call.name} was cancelled.")))
            return
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001
            yield _failure_payload(failure_for(exc, call.name))
            return
        payload, failed = _value_payload(value, call.name)
        yield payload
        if failed:
            return


def stream_started(started: _Started, name: str):
    """One payload per value of a started generator, each step run in the task's context."""
    values, context = iter(started.values), started.context
    while True:
        try:
            value = context.run(next, values)
        except StopIteration:
            return
        except (SystemExit, KeyboardInterrupt):
            raise  # a crash or Ray's cancel: Ray retries or ends the stream with its own error
        except BaseException as exc:  # noqa: BLE001 - the user's error goes to the stream
            yield _failure_payload(failure_for(exc, name))
            return
        payload, failed = _value_payload(value, name)
        yield payload
        if failed:
            return


def first_n(payloads, n: int, name: str):
    """What a Ray task with ``num_returns=n`` returns for a generator: its first ``n`` values (as Ray, extra
    values are dropped; missing ones fail with a ValueError)."""
    out = list(itertools.islice(payloads, n))
    if len(out) < n:
        got = len(out)
        error = ValueError(f"Task returned {got} objects, but num_returns={n}.")
        out += [_failure_payload(failure_for(error, name))] * (n - got)
    if n == 1:
        return out[0]
    return tuple(out) if n else None


async def afirst_n(payloads, n: int, name: str):
    out = []
    async for payload in payloads:
        if len(out) == n:
            break
        out.append(payload)
    return first_n(iter(out), n, name)


# -- driver side ---------------------------------------------------------------------


def _wrap(native) -> ObjectRef:
    return ObjectRef(native.binary(), native)  # Ray's id: the same Ray ref always gives an equal anyray ref


class RayObjectRefGenerator(ObjectRefGenerator):
    """anyray's ObjectRefGenerator over Ray's: each ref it gives is an anyray ObjectRef of Ray's ref."""

    __slots__ = ("_gen", "_completed", "_name")

    def __init__(self, gen, completed: ObjectRef, name: str):
        self._gen = gen
        self._completed = completed
        self._name = name

    def _next(self) -> ObjectRef:
        try:
            return _wrap(next(self._gen))
        except ray.exceptions.RayError as exc:
            raise translate(exc, self._name) from exc

    async def _anext(self) -> ObjectRef:
        try:
            return _wrap(await self._gen.__anext__())
        except ray.exceptions.RayError as exc:
            raise translate(exc, self._name) from exc

    def completed(self) -> ObjectRef:
        return self._completed

    def next_ready(self) -> bool:
        return self._gen.next_ready()

    def is_finished(self) -> bool:
        return self._gen.is_finished()

    def _ready(self) -> bool:
        ready, _ = ray.wait([self._gen], timeout=0, fetch_local=False)
        return bool(ready)

    def __repr__(self) -> str:
        return f"<anyray.ObjectRefGenerator of {self._name} on Ray>"


class FailedStream(ObjectRefGenerator):
    """The stream of a call that could not be sent: one ref, holding the failure, then the end."""

    def __init__(self, failed: ObjectRef):
        self._failed = failed
        self._left = [failed]

    def _next(self) -> ObjectRef:
        if not self._left:
            raise StopIteration
        return self._left.pop()

    async def _anext(self) -> ObjectRef:
        if not self._left:
            raise StopAsyncIteration
        return self._left.pop()

    def completed(self) -> ObjectRef:
        return self._failed

    def next_ready(self) -> bool:
        return bool(self._left)

    def is_finished(self) -> bool:
        return not self._left


def dynamic_payload(dyn) -> SerializedObject:
    """A Ray ``DynamicObjectRefGenerator`` as the anyray one the core reads: anyray refs of Ray's refs."""
    from .transport import pack, unpack

    refs = [_wrap(r) for r in dyn._refs]
    return unpack(pack(serialize(DynamicObjectRefGenerator(refs))))
