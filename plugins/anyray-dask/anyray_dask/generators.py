"""Generators on Dask: what a generator task or actor method yields streams to its caller through a Dask queue.

Dask's objects are named by their futures, not by ids anyray could derive,
so the built-in backends' protocol (items under ids derived from the
generator's) does not apply. A stream here is a Dask ``Queue`` on the
scheduler, named by the generator id (the call's one return id):

- The caller makes the queue before it submits the call, and reads it with
  :class:`DaskObjectRefGenerator`, the ``ObjectRefGenerator`` the scheduler's
  ``submit_task``/``submit_actor_task`` return.
- The worker side (:func:`streamed`) runs the user's generator and puts each
  value in the queue as soon as it is yielded: a small value (a pickle of at
  most :data:`INLINE_MAX` bytes with no buffers or refs in it) travels inside
  the queue as data, as Ray keeps small objects in their owner's memory; any
  other value is scattered into the worker's memory and its future is put.
  The user's error after k values is item k (a failure), and after the last
  item an end record gives the count. Every item carries its index, so when
  Dask runs a task again after its worker died, the values the consumer has
  already received are dropped: none is yielded twice.
- When the task's own future is done (finished, failed, cancelled), the caller
  puts one more record in the queue, after everything the task put: a
  consumer waiting for the next item wakes up and reads the task's outcome.
  A task that ended without an end record (cancelled, its worker died for
  good, its arguments failed) ends the stream with its own ref, which raises.
- Backpressure (``_generator_backpressure_num_objects=N``): the consumer puts
  in a second queue how many refs it has taken; the producer, having put item
  ``i``, waits there until the consumer has taken ``i + 1 - N``.

``num_returns="dynamic"`` needs no queue: the worker scatters each value as it
is yielded and the task returns the ``DynamicObjectRefGenerator`` of their refs.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import threading
import uuid

from anyray import DynamicObjectRefGenerator, ObjectRefGenerator
from anyray.backend_kit import (
    STREAMING,
    ObjectRef,
    SerializedObject,
    failure_for,
    item_id,
    serialize,
    serialize_failure,
)
from anyray.exceptions import TaskCancelledError

from .transport import DaskRef, InlineRef, pack

INLINE_MAX = 100 * 1024  # a yielded pickle up to this size travels inside the queue (Ray inlines up to 100 KiB)
QUEUE_PREFIX = "anyray-stream-"
ITEM_KEY_PREFIX = "anyray-yield-"

# Queue records (Dask sends plain data as msgpack: lists come back as tuples).
VALUE = "v"   # ("v", index, pickle): a small value, inline
END = "end"   # ("end", count): the generator ended, or raised as its last item
DONE = "done"  # ("done",): put by the caller when the task's future is done, after all the task put
GONE = -1     # in the ack queue: the consumer dropped the generator; the producer stops


def queue_name(generator_id: bytes) -> str:
    return f"{QUEUE_PREFIX}{generator_id.hex()}"


def ack_queue_name(generator_id: bytes) -> str:
    return f"{QUEUE_PREFIX}{generator_id.hex()}-acks"


def _put(client, name: str, **record) -> None:
    client.sync(client.scheduler.queue_put, name=name, **record)


def _get(client, name: str, batch: bool = False):
    return client.sync(client.scheduler.queue_get, name=name, timeout=None, batch=batch)


class ConsumerGone(Exception):
    """The caller dropped the generator: nobody reads what the producer would yield."""


# -- worker side ---------------------------------------------------------------------------------


class _Producer:
    """Puts one call's items in its queue; survives the call's reruns in this process (``sys.exit``),
    which put only the items not put yet."""

    def __init__(self, client, generator_id: bytes, backpressure: int, name: str):
        self.client = client
        self.generator_id = generator_id
        self.queue = queue_name(generator_id)
        self.backpressure = backpressure
        self.name = name
        self.sent = 0    # items put in the queue by this process
        self.acked = 0   # refs the consumer has taken, as far as this producer knows
        self.token = uuid.uuid4().hex[:12]  # tells this attempt's scattered items from a rerun's

    def put(self, index: int, obj: SerializedObject) -> None:
        """Put item ``index`` in the queue (unless this process put it already)."""
        if index < self.sent:
            return
        payload = pack(_owned(obj))
        try:
            if type(payload) is bytes and len(payload) <= INLINE_MAX:
                _put(self.client, self.queue, data=(VALUE, index, payload))
            else:
                key = f"{ITEM_KEY_PREFIX}{self.generator_id.hex()}-{index}-{self.token}"
                futures = self.client.scatter({key: payload}, hash=False)
                _put(self.client, self.queue, key=futures[key].key)
        except KeyError:  # the queue is gone: its consumer is done with it
            raise ConsumerGone from None
        self.sent = index + 1

    def room(self, put: int) -> None:
        """With ``put`` items put, wait until the consumer is fewer than ``backpressure`` refs behind."""
        if self.backpressure <= 0:
            return
        taken_needed = put + 1 - self.backpressure
        while self.acked < taken_needed:
            try:
                taken = _get(self.client, ack_queue_name(self.generator_id))["value"]  # a record of data
            except KeyError:
                raise ConsumerGone from None
            if taken == GONE:
                raise ConsumerGone
            self.acked = max(self.acked, taken)

    def end(self, count: int) -> None:
        try:
            _put(self.client, self.queue, data=(END, count))
        except KeyError:
            pass  # nobody reads it any more


def _owned(obj: SerializedObject) -> SerializedObject:
    """``obj`` with its buffers copied: scattered in this worker, a value stays here unpickled, and the
    user's code may change its arrays after the yield."""
    if not obj.buffers:
        return obj
    return SerializedObject(obj.data, [bytes(memoryview(b)) for b in obj.buffers], obj.contained_refs)


def _encode(value, name: str) -> SerializedObject:
    try:
        return serialize(value, what=f"a value yielded by {name}")
    except TypeError as exc:  # anyray's SerializationError: the ref of this value raises it
        return serialize_failure(failure_for(exc, name))


def _cancelled(ctx) -> bool:
    """Whether ``cancel`` reached this call: an actor call is flagged; a Dask task is cancelled on its worker."""
    if ctx is not None and ctx.cancelled:
        return True
    from distributed.worker import thread_state

    key = getattr(thread_state, "key", None)
    if key is None:
        return False
    try:
        from distributed import get_worker

        ts = get_worker().state.tasks.get(key)
    except ValueError:
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _check_cancel(ctx, name: str) -> None:
    if _cancelled(ctx):
        raise TaskCancelledError(f"{name} was cancelled.")


def streamed(target, mode: str, generator_id: bytes, backpressure: int, name: str, ctx, client, store):
    """``target`` (a generator function or method) as a function whose values stream: it returns None
    (a stream) or the ``DynamicObjectRefGenerator`` of its values, or, on an event loop, a coroutine of it.
    ``store`` is the worker's object store (dynamic values are put there)."""
    if mode == STREAMING:
        sink = _Producer(client, generator_id, backpressure, name)
    else:
        sink = _Dynamic(generator_id, name, store)

    def run(*args, **kwargs):
        values = target(*args, **kwargs)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if inspect.isasyncgen(values):
                return asyncio.run(_drive_async(values, sink, name, ctx))
            return _drive(values, sink, name, ctx)
        return _drive_async(values, sink, name, ctx)  # an async actor: the executor awaits it

    return run


class _Dynamic:
    """The values of a ``num_returns="dynamic"`` call, each scattered as it is yielded."""

    def __init__(self, generator_id: bytes, name: str, store):
        self.generator_id = generator_id
        self.name = name
        self.store = store
        self.refs: list[ObjectRef] = []

    def put(self, index: int, obj: SerializedObject) -> None:
        if index == 0:
            self.refs = []  # a rerun in this process starts again
        ref = ObjectRef(item_id(self.generator_id, index))
        self.store.put(ref, obj)
        self.refs.append(ref)

    def room(self, put: int) -> None:
        pass

    def end(self, count: int):
        return DynamicObjectRefGenerator(self.refs)


def _drive(values, sink, name: str, ctx):
    index = 0
    try:
        for value in values:
            _check_cancel(ctx, name)
            sink.put(index, _encode(value, name))
            index += 1
            sink.room(index)
    except ConsumerGone:
        return None
    except TaskCancelledError:
        raise  # a cancel ends the call, not just its stream: its ref raises
    except Exception as exc:  # noqa: BLE001 - the user's error is the stream's last item
        return _fail(sink, index, exc, name)
    return _end(sink, index)


async def _drive_async(values, sink, name: str, ctx):
    """:func:`_drive` on an event loop (async actors, async generators): waiting for room runs in a thread."""
    loop = asyncio.get_running_loop()
    index = 0

    async def put(value):
        nonlocal index
        _check_cancel(ctx, name)
        sink.put(index, _encode(value, name))
        index += 1
        if getattr(sink, "backpressure", 0) > 0:
            await loop.run_in_executor(None, sink.room, index)

    try:
        if inspect.isasyncgen(values):
            async for value in values:
                await put(value)
        else:
            for value in values:
                await put(value)
    except ConsumerGone:
        return None
    except (asyncio.CancelledError, TaskCancelledError):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's error is the stream's last item
        return _fail(sink, index, exc, name)
    return _end(sink, index)


def _fail(sink, index: int, exc: BaseException, name: str):
    """The user's error as the stream's last item, then its end (None if the consumer is gone)."""
    try:
        sink.put(index, serialize_failure(failure_for(exc, name)))
    except ConsumerGone:
        return None
    return _end(sink, index + 1)


def _end(sink, count: int):
    result = sink.end(count)
    return result if isinstance(sink, _Dynamic) else None


# -- caller side ---------------------------------------------------------------------------------------


class Channel:
    """The caller's end of a stream's queues. They are released once both the consumer is done with them
    and the task's future is done (so the record saying so never goes to a released queue)."""

    def __init__(self, client, generator_id: bytes, backpressure: int):
        from distributed import Queue

        self.client = client
        self.name = queue_name(generator_id)
        self.acks = ack_queue_name(generator_id) if backpressure > 0 else None
        self.queue = Queue(self.name, client=client)
        self.ack_queue = Queue(self.acks, client=client) if self.acks else None
        self._lock = threading.Lock()
        self._consumer_done = False
        self._task_done = False
        self._released = False

    def watch(self, future) -> None:
        """Once the task's ``future`` is done, wake the consumer, then release the queues if it is done.
        This runs on the client's event loop (not in Dask's callback thread, which no longer takes work
        while the interpreter exits)."""
        async def when_done():
            try:
                while future.status == "pending":
                    await future._state.wait()
                await self.client.scheduler.queue_put(name=self.name, data=(DONE,))
            except Exception:  # noqa: BLE001 - a client shutting down: nobody waits any more
                pass
            self._task_done_now()

        self.client.loop.add_callback(when_done)

    def _task_done_now(self) -> None:
        with self._lock:
            self._task_done = True
            release = self._consumer_done and not self._released
            self._released |= release
        if release:
            self._release()

    def consumer_done(self, early: bool) -> None:
        """The consumer reached the end, or dropped the generator (``early``: tell a waiting producer)."""
        with self._lock:
            if self._consumer_done:
                return
            self._consumer_done = True
            release = self._task_done and not self._released
            self._released |= release
        if early and self.ack_queue is not None and not release:
            threading.Thread(target=self._tell_gone, name="anyray-dask-stream-gone", daemon=True).start()
        if release:
            self._release()

    def ack(self, taken: int) -> None:
        _put(self.client, self.acks, data=taken)

    def _tell_gone(self) -> None:
        try:
            _put(self.client, self.acks, data=GONE)
        except Exception:  # noqa: BLE001 - released or the client is gone: nobody waits
            pass

    def _release(self) -> None:
        for queue in (self.queue, self.ack_queue):
            if queue is not None:
                try:
                    queue.close()
                except Exception:  # noqa: BLE001 - a closed client released everything already
                    pass


_STOP = object()


class DaskObjectRefGenerator(ObjectRefGenerator):
    """anyray's ObjectRefGenerator over a Dask queue: refs whose ``native`` is the value (small) or its future."""

    def __init__(self, completed: ObjectRef, channel: Channel, name: str, runtime):
        self._completed = completed
        self._future = completed.native.future
        self._channel = channel
        self._name = name
        self._runtime = runtime
        self._id = completed.binary()
        self._buffer: collections.deque[ObjectRef] = collections.deque()
        self._received = 0    # the index of the next item the queue should give
        self._taken = 0       # refs given by next()
        self._count: int | None = None
        self._task_done = False
        self._finished = False
        self._lock = threading.RLock()

    # -- reading the queue
    def _take_records(self, block: bool) -> None:
        """Read what the queue holds now; if nothing and ``block``, wait for one record."""
        records = self._channel.queue.get(batch=True)
        if not records and block:
            records = [self._blocking(self._channel.queue.get)]
        for record in records:
            self._record(record)

    def _blocking(self, fn):
        """``fn()``, leaving the task's thread slot meanwhile when this runs in a task."""
        from anyray.backend_kit import current_task

        scheduler = self._runtime.scheduler
        lends = getattr(scheduler, "lends_cpus", False) and current_task.get() is not None
        if lends:
            scheduler.task_blocked()
        try:
            return fn()
        finally:
            if lends:
                scheduler.task_unblocked()

    def _record(self, record) -> None:
        from distributed import Future

        if isinstance(record, Future):
            index = int(record.key.rsplit("-", 2)[1])
            if index == self._received:
                self._buffer.append(ObjectRef(item_id(self._id, index), DaskRef(record)))
                self._received += 1
            else:
                self._duplicate(index)
            return
        kind = record[0]
        if kind == VALUE:
            index = record[1]
            if index == self._received:
                self._buffer.append(ObjectRef(item_id(self._id, index), InlineRef(record[2])))
                self._received += 1
            else:
                self._duplicate(index)
        elif kind == END:
            self._count = record[1]
        elif kind == DONE:
            self._task_done = True

    def _duplicate(self, index: int) -> None:
        """A rerun of the task (its worker died) yielded ``index`` again: drop it; a producer waiting for
        room learns how many refs were taken already."""
        if self._channel.acks is not None and index < self._taken:
            self._channel.ack(self._taken)

    # -- the end
    def _outcome(self):
        """The task's future is done and no end record came: its ref raises (ended the stream), or the stream
        simply has no more items."""
        status = self._future.status
        if status == "finished":
            try:
                self._runtime.get(self._completed)
            except Exception:  # noqa: BLE001 - the stream ends with the task's error
                return self._completed
            return _STOP
        return self._completed

    def _finish(self, result):
        self._finished = True
        self._buffer.clear()
        self._channel.consumer_done(early=False)
        return result

    def _step(self):
        with self._lock:
            if self._finished:
                return _STOP
            while True:
                if self._future.status == "cancelled":  # as in Ray, the next ref raises at once
                    return self._finish(self._completed)
                if self._buffer:
                    ref = self._buffer.popleft()
                    self._taken += 1
                    if self._channel.acks is not None:
                        self._channel.ack(self._taken)
                    return ref
                if self._count is not None and self._taken >= self._count:
                    return self._finish(_STOP)
                if self._task_done:
                    return self._finish(self._outcome())
                self._take_records(block=True)

    def _next(self) -> ObjectRef:
        ref = self._step()
        if ref is _STOP:
            raise StopIteration
        return ref

    async def _anext(self) -> ObjectRef:
        ref = await asyncio.get_running_loop().run_in_executor(None, self._step)
        if ref is _STOP:
            raise StopAsyncIteration
        return ref

    def completed(self) -> ObjectRef:
        return self._completed

    def _peek(self) -> None:
        if not self._finished and not self._buffer and self._count is None and not self._task_done:
            self._take_records(block=False)

    def next_ready(self) -> bool:
        with self._lock:
            self._peek()
            if self._finished:
                return False
            if self._buffer:
                return True
            ended = self._count is not None and self._taken >= self._count
            # at an error end, the next ref is the task's own, which holds its error now
            return not ended and (self._task_done or self._future.status == "cancelled")

    def is_finished(self) -> bool:
        with self._lock:
            self._peek()
            return self._finished or (self._count is not None and self._taken >= self._count)

    def _ready(self) -> bool:
        with self._lock:
            self._peek()
            return (self._finished or bool(self._buffer) or self._task_done
                    or self._future.status == "cancelled"
                    or (self._count is not None and self._taken >= self._count))

    def __repr__(self) -> str:
        return f"<anyray.ObjectRefGenerator of {self._name} on Dask>"

    def __del__(self):
        channel = getattr(self, "_channel", None)
        if channel is not None and not self._finished:
            try:
                channel.consumer_done(early=True)
            except Exception:  # noqa: BLE001 - interpreter shutdown
                pass
