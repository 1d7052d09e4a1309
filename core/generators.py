"""Generator tasks and actor methods: their results stream through the object store.

A streaming (or ``"dynamic"``) task has one return ref, whose id names the
stream (the *generator id*). Each object of the stream is an ordinary store
object whose id is derived from the generator id, so any backend whose store
can put, wait and get by id streams with no code of its own:

- item ``i``, the ``i``-th value the generator yielded (or, after the last
  value, the exception it raised, as a failure that raises on ``get``);
- the count: how many items there are, put once the generator has ended or
  raised, after the last item;
- ack ``i``, put by the consumer when it took item ``i``, only when the
  producer must not run more than ``_generator_backpressure_num_objects``
  items ahead of it.

The ids are deterministic, so a task retried after its worker died puts the
same ids again, and the store ignores a second put of an id: a value already
produced is never yielded twice. A task that is cancelled or whose worker
died for good puts no count: its return ref holds the error, and the
consumer's next ref is that ref.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import itertools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from . import serialization
from .current import require_runtime
from .exceptions import TaskCancelledError
from .object_ref import ObjectRef
from .specs import RemoteFailure

STREAMING = "streaming"
DYNAMIC = "dynamic"
NO_BACKPRESSURE = -1


def _derived(generator_id: bytes, tag: bytes, index: int = 0) -> bytes:
    return hashlib.blake2b(generator_id + tag + index.to_bytes(8, "big"), digest_size=16).digest()


def item_id(generator_id: bytes, index: int) -> bytes:
    return _derived(generator_id, b"item", index)


def count_id(generator_id: bytes) -> bytes:
    return _derived(generator_id, b"count")


def ack_id(generator_id: bytes, index: int) -> bytes:
    return _derived(generator_id, b"ack", index)


class StreamSpec(NamedTuple):
    """How a call streams, built by the backend that runs it: its generator id (the call's one return
    id), ``mode`` (``"streaming"`` or ``"dynamic"``) and ``backpressure`` (-1: none)."""

    generator_id: bytes
    mode: str
    backpressure: int = NO_BACKPRESSURE


def stream_of(options: dict) -> tuple[str, int] | None:
    """What a task's or actor call's options say about streaming, as a backend sends it to the process
    that runs the call: None, or ``(mode, backpressure)``."""
    mode = options.get("num_returns")
    if mode != STREAMING and mode != DYNAMIC:
        return None
    backpressure = options.get("_generator_backpressure_num_objects")
    return mode, NO_BACKPRESSURE if backpressure is None else backpressure


def stream_spec(options: dict, generator_id: bytes) -> StreamSpec | None:
    """The ``StreamSpec`` of a call with these options whose one return id is ``generator_id``, or None."""
    stream = stream_of(options)
    return None if stream is None else StreamSpec(generator_id, *stream)


def return_count(num_returns) -> int:
    """How many return refs a call with this ``num_returns`` has (a stream has one)."""
    return 1 if isinstance(num_returns, str) else num_returns


def is_generator_function(fn: Callable) -> bool:
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def resolve_num_returns(options: dict, is_generator: bool, owner: str) -> dict:
    """``options`` with Ray's default ``num_returns`` filled in (None: one value, or a stream for a
    generator); a stream asked of a function that is no generator raises, as in Ray."""
    num_returns = options.get("num_returns")
    if num_returns is None:
        return {**options, "num_returns": STREAMING if is_generator else 1}
    if isinstance(num_returns, str) and not is_generator:
        raise ValueError(f"{owner}: num_returns={num_returns!r} can only be used with generator functions "
                         f"(functions that use 'yield'), and this one is not: make it yield its values, "
                         f"or use an int num_returns.")
    return options


# --------------------------------------------------------------------------- the producer


class Producer:
    """Puts what one call yields into the store of the process running it, as the stream's items.
    ``encode(value)`` serializes a value or a ``RemoteFailure`` (the executor's)."""

    __slots__ = ("stream", "name", "store", "index", "encode")

    def __init__(self, stream: StreamSpec, name: str, encode: Callable[[Any], serialization.SerializedObject]):
        self.stream = stream
        self.name = name
        self.store = require_runtime().store
        self.index = 0
        self.encode = encode

    def put(self, value: Any) -> None:
        """Store the next item (a value, or a ``RemoteFailure``), then wait, if the consumer is
        ``backpressure`` items behind, until it takes one: the generator is not resumed meanwhile."""
        self.put_now(value)
        ack = self.ack_ref()
        if ack is not None:
            self.store.wait([ack], 1, None)

    def put_now(self, value: Any) -> None:
        """Store the next item without waiting for the consumer."""
        self._put(item_id(self.stream.generator_id, self.index), value)
        self.index += 1

    def ack_ref(self) -> ObjectRef | None:
        """The ack the consumer puts before the generator may go on; None if it need not wait."""
        stream, i = self.stream, self.index
        if stream.backpressure > 0 and i >= stream.backpressure:
            return ObjectRef(ack_id(stream.generator_id, i - stream.backpressure))
        return None

    def end(self) -> Any:
        """The generator ended (or raised, and its error is the last item): put the count. Returns the
        call's own result: None for a stream, the item refs for a dynamic generator."""
        stream, n = self.stream, self.index
        self._put(count_id(stream.generator_id), n)
        if stream.mode == DYNAMIC:
            return DynamicObjectRefGenerator([ObjectRef(item_id(stream.generator_id, i)) for i in range(n)])
        return None

    def _put(self, oid: bytes, value: Any) -> None:
        self.store.put_stream(self.stream.generator_id, ObjectRef(oid), self.encode(value))


def drive(values: Iterator, producer: Producer, failure_for: Callable[[BaseException, str], RemoteFailure]) -> Any:
    """Put every value of a (sync) generator; an exception it raises is its last item. ``KeyboardInterrupt``
    and ``SystemExit`` go on to the caller (a cancel, an exit): the stream then has no count."""
    try:
        for value in values:
            producer.put(value)
    except TaskCancelledError:
        raise  # a cancel ends the task, not just its stream
    except Exception as exc:  # noqa: BLE001 - the user's error is the stream's last item
        producer.put_now(failure_for(exc, producer.name))
    return producer.end()


async def drive_async(values, producer: Producer, failure_for, loop_executor=None) -> Any:
    """As :func:`drive`, for an async generator (or a sync one) on an event loop: waiting for the
    consumer's ack runs in ``loop_executor``, so the loop serves other calls meanwhile."""
    import asyncio

    loop = asyncio.get_running_loop()

    async def put(value):
        producer.put_now(value)
        ack = producer.ack_ref()
        if ack is not None:
            await loop.run_in_executor(loop_executor, producer.store.wait, [ack], 1, None)

    try:
        if inspect.isasyncgen(values):
            async for value in values:
                await put(value)
        else:
            for value in values:
                await put(value)
    except (asyncio.CancelledError, TaskCancelledError):  # a cancel ends the task, not just its stream
        raise
    except Exception as exc:  # noqa: BLE001 - the user's error is the stream's last item
        producer.put_now(failure_for(exc, producer.name))
    return producer.end()


def first_returns(values, num_returns: int, name: str, failure_for) -> list:
    """A generator with a static ``num_returns``, as in Ray: its first ``num_returns`` values (more are
    dropped); if it yields fewer, the refs left over raise ``ValueError``."""
    out = list(itertools.islice(values, num_returns))
    if len(out) < num_returns:
        error = ValueError(f"Task returned {len(out)} objects, but num_returns={num_returns}.")
        out += [failure_for(error, name)] * (num_returns - len(out))
    return out


# --------------------------------------------------------------------------- the consumer

_END = object()


class ObjectRefGenerator:
    """What ``.remote()`` returns for a generator: an iterator of ObjectRefs, one per value the task
    yields, each given as soon as its value is stored (``next``, ``for``, ``async for``); then
    ``StopIteration`` every time. It cannot be pickled (passed to a task, put, returned), as in Ray.

    This class is the interface; the built-in backends' generator reads the stream from the object store
    (:class:`StoreObjectRefGenerator`), and an engine's scheduler may return its own subclass from
    ``submit_task`` (``_next``, ``_anext``, ``completed``, ``next_ready``, ``is_finished``)."""

    def __iter__(self):
        return self

    def __next__(self):
        return self._next()

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._anext()

    def _next(self):
        raise NotImplementedError

    async def _anext(self):
        raise NotImplementedError

    def completed(self) -> ObjectRef:
        """The task's own ref: None once it ended; it raises if the task was cancelled or its worker died."""
        raise NotImplementedError

    def next_ready(self) -> bool:
        """Whether ``next()`` would give a ref whose value is stored now."""
        raise NotImplementedError

    def is_finished(self) -> bool:
        """Whether the end of the stream was taken (``next`` raised ``StopIteration``, or gave the error)."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """What ``wait`` counts as ready: the next ref is, or the stream has ended."""
        return self.next_ready() or self.is_finished()

    def send(self, value):
        raise NotImplementedError("`gen.send` is not supported.")

    def throw(self, *args):
        raise NotImplementedError("`gen.throw` is not supported.")

    def close(self):
        raise NotImplementedError("`gen.close` is not supported.")

    def __reduce__(self):
        raise TypeError("An ObjectRefGenerator cannot be passed to another task or actor, put in the store or "
                        "returned, as in Ray; pass the refs it yields instead.")


class StoreObjectRefGenerator(ObjectRefGenerator):
    """The generator of a task whose items stream through this runtime's object store."""

    def __init__(self, generator_ref: ObjectRef, backpressure: int = NO_BACKPRESSURE):
        self._generator_ref = generator_ref
        self._id = generator_ref._id
        self._backpressure = backpressure
        self._runtime = require_runtime()
        self._index = 0
        self._count: int | None = None  # the number of items, once the count is read
        self._returned = False  # the task's return is sealed (and is no failure)
        self._finished = False
        self._pid = os.getpid()

    def _next(self) -> ObjectRef:
        ref = self._step(None)
        if ref is _END:
            raise StopIteration
        return ref

    async def _anext(self) -> ObjectRef:
        import asyncio

        ref = await asyncio.get_running_loop().run_in_executor(None, self._step, None)
        if ref is _END:
            raise StopAsyncIteration
        return ref

    def _step(self, timeout: float | None):
        if self._finished:
            return _END
        runtime = self._runtime
        runtime.counter.drain()  # items dropped since the last step are freed before the next comes
        item = ObjectRef(item_id(self._id, self._index))
        count = ObjectRef(count_id(self._id))
        watch = [item, count] if self._returned else [item, count, self._generator_ref]
        while True:
            sealed = runtime.wait_ids(watch, timeout)
            if not sealed:
                return None  # timed out
            if item._id in sealed:
                return self._take(item._id)
            if count._id in sealed:
                if self._count is None:
                    self._count = runtime.get(count)
                if self._index >= self._count:
                    self._finished = True
                    return _END
                watch = [item]  # its items are stored before the count: this one is there (a store's wait
                continue        # may answer with the count alone, which is sealed for good)
            # The task's return is sealed, and no count yet: a failure (cancelled, its worker died), which
            # the next ref raises; or the task ended, and its count is on its way.
            try:
                runtime.get(self._generator_ref)
            except Exception:  # noqa: BLE001 - the stream ended with it
                self._finished = True
                return self._generator_ref
            self._returned = True
            watch = [item, count]

    def _take(self, oid: bytes) -> ObjectRef:
        runtime = self._runtime
        ref = ObjectRef(oid, None, runtime.counter)
        if self._backpressure > 0:
            runtime.store.put_stream(self._id, ObjectRef(ack_id(self._id, self._index)),
                                     serialization.serialize(None))
        self._index += 1
        return ref

    def completed(self) -> ObjectRef:
        return self._generator_ref

    def is_finished(self) -> bool:
        """Whether the stream ended and every ref of it was taken."""
        if not self._finished and self._count is None:
            count = ObjectRef(count_id(self._id))
            if self._runtime.wait_ids([count], 0):
                self._count = self._runtime.get(count)
        return self._finished or (self._count is not None and self._index >= self._count)

    def next_ready(self) -> bool:
        if self._finished:
            return False
        return self._runtime.wait_ids([ObjectRef(item_id(self._id, self._index))], 0) != set()

    def ready_ids(self) -> list[ObjectRef]:
        """The refs ``wait`` watches for this generator: its next item, its count, its task's return."""
        if self._finished:
            return [self._generator_ref]
        return [ObjectRef(item_id(self._id, self._index)), ObjectRef(count_id(self._id)), self._generator_ref]

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._id.hex()})"

    def __del__(self):
        """Free the items nobody took, and the acks this consumer put (the count is freed with them)."""
        if getattr(self, "_pid", None) != os.getpid():
            return
        try:
            ids = []
            if self._count is not None:
                ids = [item_id(self._id, i) for i in range(self._index, self._count)]
                ids.append(count_id(self._id))
            if self._backpressure > 0:
                ids += [ack_id(self._id, i) for i in range(self._index)]
            if ids:
                self._runtime.free_ids(ids)
        except Exception:  # noqa: BLE001 - interpreter shutdown, or the runtime is gone
            pass


def wait_with_generators(runtime, entries: list, num_returns: int, timeout: float | None):
    """``wait`` over refs and generators (``num_returns`` checked): a generator is ready when its next ref
    is, or its end is. An engine's own generators answer ``_ready()`` only: those are polled."""
    for i, entry in enumerate(entries):
        if not isinstance(entry, (ObjectRef, ObjectRefGenerator)):
            raise TypeError(f"wait() expects ObjectRefs or ObjectRefGenerators, but item {i} is a "
                            f"{type(entry).__name__} ({entry!r:.60}).")
    if len(set(map(id, entries))) != len(entries):
        raise ValueError("wait() got the same ObjectRef or generator more than once; pass each once.")
    deadline = None if timeout is None else time.monotonic() + timeout
    polled = {i for i, e in enumerate(entries) if type(e) is not ObjectRef and not hasattr(e, "ready_ids")}
    while True:
        watched = [[] if i in polled else [e] if type(e) is ObjectRef else e.ready_ids()
                   for i, e in enumerate(entries)]
        every = list({r._id: r for refs in watched for r in refs}.values())
        sealed = runtime.store.wait(every, len(every), 0) if every else set()
        picked = [i for i, refs in enumerate(watched)
                  if (entries[i]._ready() if i in polled else any(r._id in sealed for r in refs))][:num_returns]
        left = None if deadline is None else deadline - time.monotonic()
        if len(picked) == num_returns or (left is not None and left <= 0):
            break
        if polled:
            left = 0.005 if left is None else min(left, 0.005)
        pending = [r for r in every if r._id not in sealed]
        if pending:
            runtime.wait_ids(pending, left)
        else:
            time.sleep(left)
    chosen = set(picked)
    return [entries[i] for i in picked], [e for i, e in enumerate(entries) if i not in chosen]


class DynamicObjectRefGenerator:
    """What a ``num_returns="dynamic"`` task's one ref holds: the refs of the values it yielded. Iterating
    takes them (a second iteration gives nothing); ``len`` is how many are left."""

    def __init__(self, refs: list[ObjectRef]):
        self._refs = collections.deque(refs)

    def __iter__(self):
        while self._refs:
            yield self._refs.popleft()

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
