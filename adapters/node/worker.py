"""The worker side of a node: runs tasks and hosts actors, and gives user code a full anyray runtime.

``install(setup)`` turns a bare worker (``workers.worker_main``) into a
node worker: the reader moves to a thread of its own and the main thread
runs tasks, so a task's ``cancel`` can interrupt it with SIGINT even in a
blocking call. User code inside a task sees an ordinary ``Runtime`` whose
backend forwards every port call to the driver (``WorkerScheduler``,
``WorkerStore``): nested tasks, actors, ``get``/``put``/``wait`` all work.

References held here are borrowed from the driver (see ``protocol``): this
process's counters report each id's first reference and its last, and the
views of shared memory report when they are gone, so the driver keeps what
this worker can still read.
"""

from __future__ import annotations

import collections
import itertools
import os
import pickle
import signal
import sys
import threading
import time
import traceback

import cloudpickle

from anyray import serialization
from anyray.context import TaskContext, current_task
from anyray.events import JobEvents
from anyray.exceptions import ActorDiedError, GetTimeoutError, TaskCancelledError
from anyray.executor import Call, failure_for, serialize_failure
from anyray.object_ref import ObjectRef
from anyray.ports.backend import Backend, BackendConfig
from anyray.ports.object_store import ObjectStore
from anyray.ports.scheduler import Scheduler
from anyray.runtime import ReferenceCounter, Runtime, set_current
from anyray.serialization import SerializedObject
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure

from ..common.actor_host import ActorHost
from ..common.resources import Lease
from . import protocol as p
from . import workers
from .arena import Arena, Location
from .store import pinned_views, to_wire

FLUSH_INTERVAL = 0.1  # seconds between sends of reference changes when nothing else goes out


class _Pending:
    """One request awaiting its RESPONSE: a bare lock to block on, and the answer."""

    __slots__ = ("lock", "ok", "value", "abandoned", "op")

    def __init__(self, op: str):
        self.op = op
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = True
        self.value = None
        self.abandoned = False


class _ForwardedEvents(JobEvents):
    """Task records of this worker: echoed here (stderr is the driver's) and sent with the next result."""

    def __init__(self):
        super().__init__(max_spans=1000)
        self.outbox: list = []

    def task_finished(self, record) -> None:
        super().task_finished(record)
        self.outbox.append((record.task_id, record.name, record.kind, record.start, record.end, record.pid,
                            record.tid, record.error_type, record.message))  # a tuple pickles faster

    def take(self) -> list:
        out, self.outbox = self.outbox, []
        return out


class _BorrowCounter(ReferenceCounter):
    """A ReferenceCounter that tells the node when an id gets its first reference in this process."""

    def __init__(self, free, first):
        super().__init__(free)
        self._first = first

    def incref(self, object_id: bytes) -> None:
        with self._lock:
            n = self._counts.get(object_id)
            if n is None:
                self._first(object_id)
            self._counts[object_id] = (n or 0) + 1


class WorkerNode:
    """Everything of one worker process: its connection, its runtime, the task it runs or the actor it hosts."""

    def __init__(self, loop: workers.WorkerLoop, setup: dict):
        self.loop = loop
        self.conn = loop.conn
        self._fd = loop.conn.fileno()
        self.setup = setup
        self.inline_max = setup["inline_max"]
        self._send_lock = threading.Lock()
        self._refs: dict[bytes, int] = {}
        self._handles: dict[bytes, int] = {}
        self._unpins: collections.deque = collections.deque()
        self._requests: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._functions: dict[bytes, object] = {}
        self.exported: set[bytes] = set()  # function ids the driver has the code of
        self._arena: Arena | None = None
        self._tasks: collections.deque = collections.deque()  # (run, arg) for the main thread, in order
        self._read_lock = threading.Lock()  # held by the thread reading the connection
        self._current: bytes | None = None  # the task the main thread runs
        self._running = False               # the main thread is inside that task's call
        self._pumping = False               # the main thread reads the connection for an answer
        self._cancel = False                # a cancel of the current task was read
        self._exit = False
        self._changes_lock = threading.Lock()
        self._answer_lock = threading.Lock()
        self._sending = False               # the main thread is sending a message
        self._held_interrupt = False        # a SIGINT came meanwhile
        self._helpers = 0                   # threads other than main waiting for an answer
        self._helpers_lock = threading.Lock()
        self.main_thread = threading.get_ident()
        self.events = _ForwardedEvents()
        self.actor: ActorHost | None = None      # a threaded or async actor hosted here
        self.inline: _InlineActor | None = None  # a sync actor whose calls run on the main thread
        self._last_send = time.monotonic()
        config = BackendConfig(num_cpus=None, namespace=setup["namespace"], job_id=setup["job_id"],
                               options={"node": self})
        self.runtime = Runtime(WorkerBackend, config,
                               counters=(lambda free: _BorrowCounter(free, self._borrowed),
                                         lambda free: _BorrowCounter(free, self._handle_borrowed)))
        set_current(self.runtime)

    # -- sending --------------------------------------------------------------
    def _take_refs(self):
        if not (self._refs or self._handles or self._unpins):
            return None
        with self._changes_lock:
            refs, self._refs = self._refs, {}
            handles, self._handles = self._handles, {}
        unpins = []
        while self._unpins:
            unpins.append(self._unpins.popleft())
        return list(refs.items()), list(handles.items()), unpins

    def send(self, tag: int, body) -> None:
        on_main = threading.get_ident() == self.main_thread
        if on_main:  # a cancel (SIGINT's handler runs here) must not cut a message in half
            self._sending = True
        try:
            with self._send_lock:  # reference changes and the message they precede stay in order
                payload = workers.frame(tag, p.dumps((self._take_refs(), body)))
                self._last_send = time.monotonic()
                self.conn.send_bytes(payload)
        finally:
            if on_main:
                self._sending = False
                if self._held_interrupt:  # a cancel came during the send: it lands now
                    self._held_interrupt = False
                    self._on_sigint(signal.SIGINT, None)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                self.runtime.counter.drain()
                self.runtime.handles.drain()
                if (self._refs or self._handles or self._unpins) and \
                        time.monotonic() - self._last_send >= FLUSH_INTERVAL:
                    self.send(p.REFS, None)
            except OSError:
                return  # the driver is gone

    # reference changes; the counters call these under their own locks, so they only record
    def _borrowed(self, oid: bytes) -> None:
        self._note("_refs", oid, 1)

    def released(self, oid: bytes) -> None:
        # Only if not referenced again since its count reached zero: then the +1 stands.
        self.runtime.counter.if_unreferenced(oid, lambda: self._note("_refs", oid, -1))

    def _handle_borrowed(self, actor_id: bytes) -> None:
        self._note("_handles", actor_id, 1)

    def handle_released(self, actor_id: bytes) -> None:
        self.runtime.handles.if_unreferenced(actor_id, lambda: self._note("_handles", actor_id, -1))

    def _note(self, table: str, key: bytes, sign: int) -> None:
        """Record a first reference (+1) or a last one going (-1); the last change of a batch counts."""
        with self._changes_lock:  # the table is swapped for a fresh one when a message takes it
            getattr(self, table)[key] = sign

    # -- requests to the driver -------------------------------------------------
    def request(self, op: str, args, timeout: float | None = None):
        """Ask the driver and wait for its answer; raise GetTimeoutError past ``timeout``.

        The main thread reads the answer off the connection itself (handling whatever else arrives
        first, a cancel of its task included); other threads wait for whoever reads."""
        pending = _Pending(op)
        rid = next(self._request_ids)
        self._requests[rid] = pending
        on_main = threading.get_ident() == self.main_thread
        if on_main:
            self._pumping = True
        try:
            self.send(p.REQUEST, (rid, op, args))
            answered = self._pump(pending, timeout) if on_main else self._wait(pending, timeout)
        except BaseException:
            self._abandon(rid, pending)
            raise
        finally:
            if on_main:
                self._pumping = False
                if self._held_interrupt:  # a cancel came while this thread waited: it lands now
                    self._held_interrupt = False
                    try:
                        self._on_sigint(signal.SIGINT, None)
                    except BaseException:
                        self._abandon(rid, pending)  # nobody reads the answer: release what it pinned
                        raise
        if not answered:
            self._abandon(rid, pending)
            raise GetTimeoutError(f"{op} timed out after {timeout} s")
        if not pending.ok:
            raise pending.value
        return pending.value

    def _pump(self, pending: _Pending, timeout: float | None) -> bool:
        """The main thread waits for an answer by reading the connection itself; a helper thread of
        the task may be reading just now, one message at a time, so the lock is taken per message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn, answered = self.conn, pending.lock
        while not answered.acquire(False):
            if self._cancel and self._running:
                self._cancel = False
                raise KeyboardInterrupt("The task was cancelled.")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if not self._read_lock.acquire(timeout=0.005):
                continue
            try:
                if workers.spin_until_readable(self._fd) or \
                        conn.poll(left if left is not None else None if self._helpers == 0 else 0.005):
                    self._dispatch(conn.recv_bytes())
            finally:
                self._read_lock.release()
        return True

    def _wait(self, pending: _Pending, timeout: float | None) -> bool:
        """A thread other than main waits for its answer; in a task's process, where the main thread
        runs user code, it reads for itself, one message at a time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn, answered = self.conn, pending.lock
        if self.actor is not None:  # a threaded or async actor: the main thread reads all the time
            return answered.acquire(timeout=-1 if deadline is None else max(deadline - time.monotonic(), 0))
        with self._helpers_lock:
            self._helpers += 1
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if answered.acquire(timeout=0.005 if left is None else max(min(0.005, left), 0)):
                    return True
                if left is not None and left <= 0:
                    return False
                if self._read_lock.acquire(False):
                    try:
                        if conn.poll(0.005):
                            self._dispatch(conn.recv_bytes())
                    finally:
                        self._read_lock.release()
        finally:
            with self._helpers_lock:
                self._helpers -= 1

    def _abandon(self, rid: int, pending: _Pending) -> None:
        """Nobody waits for this answer any more: the driver takes back the CPUs it lent for it, and
        the answer, when it comes, is released unread."""
        with self._answer_lock:
            pending.abandoned = True
            answered = rid not in self._requests and pending.value is not None
        if answered:
            self._release_answer(pending)  # answered just now: nobody will read it
        try:
            self.tell("abandon", rid)
        except OSError:
            pass

    def tell(self, op: str, args) -> None:
        """A request that wants no answer."""
        self.send(p.REQUEST, (0, op, args))

    def _on_response(self, payload) -> None:
        rid, ok, value = pickle.loads(payload)
        with self._answer_lock:
            pending = self._requests.pop(rid, None)
            if pending is None:
                return
            pending.ok, pending.value = ok, value
            abandoned = pending.abandoned
        if abandoned:
            self._release_answer(pending)
        else:
            pending.lock.release()

    def _release_answer(self, pending: _Pending) -> None:
        if pending.op == "get" and pending.ok:
            for key, wire in pending.value:
                if type(wire) is Location:
                    self._unpins.append(key)

    # -- objects ----------------------------------------------------------------
    @property
    def arena(self) -> Arena:
        if self._arena is None:
            self._arena = Arena.attach(self.setup["arena"], writable=True)
        return self._arena

    def from_wire(self, key: bytes, wire) -> SerializedObject:
        if type(wire) is Location:
            unpins = self._unpins
            return pinned_views(self.arena, wire, lambda: unpins.append(key))
        data, buffers = wire
        return SerializedObject(data, buffers)

    def to_driver(self, obj: SerializedObject):
        """The wire form of an object going to the driver: large ones are written into a granted range."""
        if obj.nbytes < self.inline_max:
            return to_wire(obj)
        grant = self.request("alloc", Location.of(obj).nbytes)
        return self.arena.write(grant, obj)

    def get(self, ids: list[bytes], timeout: float | None) -> list[SerializedObject]:
        blocking = current_task.get() is not None
        if timeout == 0:  # the driver answers at once, with the objects or a GetTimeoutError
            answer = self.request("get", (ids, False, True))
        else:
            answer = self.request("get", (ids, blocking, False), timeout)
        return [self.from_wire(key, wire) for key, wire in answer]

    def function(self, fn_id: bytes, blob: bytes | None):
        fn = self._functions.get(fn_id)
        if fn is None:
            fn = self._functions[fn_id] = cloudpickle.loads(blob)
            self.exported.add(fn_id)
        return fn

    def export(self, descriptor: FunctionDescriptor) -> bytes | None:
        """The pickled code of a function or class the driver does not have yet, else None."""
        if descriptor.function_id in self.exported:
            return None
        self.exported.add(descriptor.function_id)
        self._functions[descriptor.function_id] = descriptor.target  # the driver may send it back here
        return cloudpickle.dumps(descriptor.target, 5)

    # -- tasks ------------------------------------------------------------------
    def main(self) -> None:
        """The main thread: read the connection, run each task here as it comes, until the driver goes."""
        threading.Thread(target=self._flush_loop, name="anyray-worker-flush", daemon=True).start()
        conn, tasks, fd = self.conn, self._tasks, self._fd
        while not self._exit:
            try:
                if tasks:
                    if self.inline is not None and self._read_lock.acquire(False):
                        try:  # read what has arrived first: a cancel of a queued call
                            while conn.poll(0):
                                self._dispatch(conn.recv_bytes())
                        finally:
                            self._read_lock.release()
                        if not tasks:
                            continue
                    run, arg = tasks.popleft()
                    run(arg)
                    del run, arg
                    continue
                with self._read_lock:
                    if tasks:
                        continue
                    workers.spin_until_readable(fd)  # the next task often follows the last result closely
                    msg = conn.recv_bytes()
                self._dispatch(msg)
            except (KeyboardInterrupt, TaskCancelledError):
                pass  # a cancel that landed between tasks
            except (EOFError, OSError):
                return  # the driver is gone
            except Exception:  # noqa: BLE001 - one bad message must not end the worker
                traceback.print_exc()

    def _dispatch(self, msg: bytes) -> None:
        """Handle one message, on whichever thread read it; a task is queued for the main thread."""
        tag = msg[0]
        body = memoryview(msg)[1:]
        if tag == p.RESPONSE:
            self._on_response(body)
        elif tag == p.TASK:
            self._tasks.append((self._run_task, body))
        elif tag == p.ACTOR:
            self._on_actor(body)
        elif tag == p.CANCEL:
            self._on_cancel(body)
        elif tag == workers.EXIT:
            self._exit = True
        elif tag == workers.CALL:
            self.loop._call(body)
        else:
            print(f"anyray worker: no handler for message tag {tag}", file=sys.stderr)

    def _run_task(self, payload) -> None:
        (task_id, fn_id, blob, args_wire, dep_ids, dep_wires, return_ids, name, resources, gpu_ids,
         retry_exceptions, max_retries) = pickle.loads(payload)
        unread = {key for key, wire in dep_wires.items() if type(wire) is Location}
        if type(args_wire) is Location:
            unread.add(task_id)

        def fetch(refs):
            values = {}
            for ref in refs:  # each dependency read once: one read, one pin
                if ref._id not in values:
                    unread.discard(ref._id)
                    values[ref._id] = serialization.deserialize(self.from_wire(ref._id, dep_wires[ref._id]))
            return [values[ref._id] for ref in refs]

        self._current, self._cancel = task_id, False
        self._running = True
        try:
            fn = self.function(fn_id, blob)
            unread.discard(task_id)
            args = self.from_wire(task_id, args_wire)
            if gpu_ids:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
            ctx = TaskContext(task_id=task_id, name=name, resources=resources, gpu_ids=gpu_ids)
            call = Call(fn, name, "task", ctx, len(return_ids), self.events, retry_exceptions, max_retries)
            deps = [ObjectRef(oid) for oid in dep_ids]
            outputs = call.run(args, deps, fetch)
            self._running = False
            del args, deps, call
        except BaseException as exc:  # noqa: BLE001 - a cancel can land outside the user's code
            self._running = False
            if isinstance(exc, KeyboardInterrupt):
                exc = TaskCancelledError(f"{name} was interrupted.")
            outputs = [serialize_failure(failure_for(exc, name))] * len(return_ids)  # e.g. its code failed to load
        self._current, self._cancel = None, False
        self._unpins.extend(unread)
        self.runtime.counter.drain()  # refs the task dropped cancel out before the result goes
        self.send_result(task_id, outputs)

    def send_result(self, task_id: bytes, outputs: list[SerializedObject]) -> None:
        wires, contained = [], []
        for obj in outputs:
            try:
                wires.append(self.to_driver(obj))
            except Exception as exc:  # noqa: BLE001 - the store is full, say: the result is that error
                wires.append(to_wire(serialize_failure(RemoteFailure(exc))))
            contained.append(p.contained_ids(obj.contained_refs) if obj.contained_refs else None)
        self.send(p.RESULT, (task_id, wires, contained, self.events.take()))

    def _on_cancel(self, payload) -> None:
        if pickle.loads(payload) != self._current or not self._running:
            return  # finished already
        self._cancel = True
        if threading.get_ident() != self.main_thread:
            signal.pthread_kill(self.main_thread, signal.SIGINT)  # the main thread raises it

    def _on_sigint(self, signum, frame) -> None:
        """A cancel while the main thread runs user code (the driver sends SIGINT after CANCEL).

        Reads what has arrived, unless another thread reads now (that one passes a cancel on as
        another SIGINT), and raises ``KeyboardInterrupt`` in the task if its cancel is there (the task
        then fails with ``TaskCancelledError``). A cancel that comes while the main thread sends a
        message waits until the message is out."""
        if not self._running:
            return  # between tasks: nothing to cancel
        if self._sending or self._pumping:
            # Handled once the message is out, or once the answer is in: the pump may read that answer
            # before the cancel and stop reading, so it looks again when it is done.
            self._held_interrupt = True
            return
        if not self._cancel and self._read_lock.acquire(False):
            try:  # nothing dispatched here sends, so an interrupted send is never re-entered
                conn = self.conn
                while conn.poll(0):
                    self._dispatch(conn.recv_bytes())
            finally:
                self._read_lock.release()
        if self._cancel and self._running:
            self._cancel = False
            raise KeyboardInterrupt("The task was cancelled.")  # as Ray: `except Exception` does not catch it

    # -- the hosted actor -----------------------------------------------------------
    # A sync actor with max_concurrency 1 runs its calls here on the main thread, as tasks do; a
    # threaded or async actor runs them on threads of an ActorHost, while the main thread reads.
    def _on_actor(self, payload) -> None:
        kind, body = pickle.loads(payload)
        inline = self.inline
        if kind == "call":
            if inline is not None:
                self._tasks.append((inline.call, body))
            else:
                self._actor_call(body)
        elif kind == "create":
            self._actor_create(body)
        elif kind == "cancel":
            if inline is not None:
                inline.cancel(body)
            elif self.actor is not None:
                self.actor.cancel(ObjectRef(body))
        elif kind == "terminate":
            if inline is not None:
                self._tasks.append((inline.terminate, None))
            elif self.actor is not None:
                self.actor.terminate_after_pending()

    def _actor_create(self, body) -> None:
        (actor_id, cls_id, blob, name, args_wire, dep_ids, resources, options, namespace, is_async,
         gpu_ids, restarts) = body
        try:
            cls = self.function(cls_id, blob)
        except Exception as exc:  # noqa: BLE001 - e.g. its module does not import here
            self.send(p.ACTOR_DIED, (actor_id, f"The actor {name} died: its class could not be loaded in "
                                               f"the actor's process: {type(exc).__name__}: {exc}"))
            return
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        spec = ActorSpec(actor_id=actor_id, cls=FunctionDescriptor(cls_id, name, cls),
                         args=self.from_wire(actor_id, args_wire), deps=[ObjectRef(i) for i in dep_ids],
                         resources=resources, options=options, namespace=namespace, is_async=is_async)
        if spec.max_concurrency == 1 and not is_async:
            self.inline = _InlineActor(self, spec, gpu_ids, restarts)
            self._tasks.append((self.inline.construct, None))
            return
        host = _ActorHostShim(self, gpu_ids)
        self.actor = ActorHost(spec, host)
        self.actor.restarts = restarts
        self.actor.start()

    def _actor_call(self, body) -> None:
        task_id, method, args_wire, dep_ids, return_ids, options, name, caller_id, seq = body
        spec = ActorTaskSpec(task_id=task_id, actor_id=self.actor.spec.actor_id, method_name=method,
                             args=self.from_wire(task_id, args_wire), deps=[ObjectRef(i) for i in dep_ids],
                             returns=[ObjectRef(i) for i in return_ids], caller_id=caller_id, seq=seq,
                             options=options, name=name)
        self.actor.submit(spec)

    def fetch(self, refs) -> list:
        """Values of ``refs`` (failures left as values), asked from the driver."""
        return [serialization.deserialize(o) for o in self.get([r._id for r in refs], None)]


class _InlineActor:
    """A sync actor with ``max_concurrency`` 1, run by the main thread of its process: each call runs
    where it is read, in order, with no thread hand-off."""

    def __init__(self, node: WorkerNode, spec: ActorSpec, gpu_ids, restarts: int):
        self.node = node
        self.spec = spec
        self.gpu_ids = gpu_ids
        self.restarts = restarts
        self.instance = None
        self.cause = ""  # set once dead

    def _context(self, task_id, name: str) -> TaskContext:
        return TaskContext(task_id=task_id, actor_id=self.spec.actor_id, name=name,
                           resources=dict(self.spec.resources), gpu_ids=self.gpu_ids, restarted=self.restarts > 0)

    def construct(self, _) -> None:
        spec, node = self.spec, self.node
        call = Call(spec.cls.target, spec.cls.name, "actor_creation", self._context(spec.actor_id, spec.cls.name),
                    1, node.events)
        result = call.invoke(spec.args, spec.deps, node.fetch)
        spec.args = None
        if type(result) is RemoteFailure:
            self._die(f"The actor {spec.cls.name} died because its constructor raised:\n{result.error}")
        else:
            self.instance = result[0]

    def call(self, body) -> None:
        task_id, method, args_wire, dep_ids, return_ids, options, name, caller_id, seq = body
        node = self.node
        if self.cause:
            if type(args_wire) is Location:
                node._unpins.append(task_id)
            node.send_result(task_id, [serialize_failure(RemoteFailure(ActorDiedError(self.cause)))] * len(return_ids))
            return
        call = Call(getattr(self.instance, method), name, "actor_task", self._context(task_id, name),
                    len(return_ids), node.events, options.get("retry_exceptions") or False,
                    options.get("max_task_retries") or 0)
        outputs = call.run(node.from_wire(task_id, args_wire), [ObjectRef(i) for i in dep_ids], node.fetch)
        del call
        node.runtime.counter.drain()
        node.send_result(task_id, outputs)

    def cancel(self, oid: bytes) -> None:
        """Cancel a call still queued here (a running sync call finishes, as in Ray)."""
        for item in self.node._tasks:
            run, body = item
            if run == self.call and oid in body[4]:
                self.node._tasks.remove(item)
                if type(body[2]) is Location:
                    self.node._unpins.append(body[0])  # its arguments were never read
                error = TaskCancelledError(f"{body[6]} was cancelled.")
                self.node.send_result(body[0], [serialize_failure(RemoteFailure(error))] * len(body[4]))
                return

    def terminate(self, _) -> None:
        self._die(f"The actor {self.spec.cls.name} ended: every handle to it was gone.")

    def _die(self, cause: str) -> None:
        if self.cause:
            return
        self.cause = cause
        self.instance = None
        self.node.send(p.ACTOR_DIED, (self.spec.actor_id, cause))


class _ActorHostShim:
    """What ``ActorHost`` needs from its host, in a worker: results go to the driver."""

    def __init__(self, node: WorkerNode, gpu_ids):
        self.node = node
        self.events = node.events
        self._lease = Lease({}, [], gpu_ids)  # the driver holds the real one

    def enqueue(self, demand, start) -> None:
        start(self._lease)  # the driver holds the actor's resources for the process

    def release(self, lease) -> None:
        pass

    def fetch(self, refs):
        return self.node.fetch(refs)

    def call_done(self, spec, outputs) -> None:
        self.node.runtime.counter.drain()
        self.node.send_result(spec.task_id, outputs)

    def call_failed(self, spec, error) -> None:
        self.node.send_result(spec.task_id, [serialize_failure(RemoteFailure(error))] * len(spec.returns))

    def actor_died(self, actor: ActorHost) -> None:
        self.node.send(p.ACTOR_DIED, (actor.spec.actor_id, actor.cause))


# --------------------------------------------------------------------------- the runtime's backend


class WorkerStore(ObjectStore):
    def __init__(self, node: WorkerNode):
        self.node = node

    def put(self, ref, obj) -> None:
        node = self.node
        wire = node.to_driver(obj)
        node.tell("put", (ref._id, wire, p.contained_ids(obj.contained_refs)))

    def get(self, refs, timeout):
        return self.node.get([r._id for r in refs], timeout)

    def wait(self, refs, num_returns, timeout):
        ids = [r._id for r in refs]
        blocking = current_task.get() is not None
        try:
            return set(self.node.request("wait", (ids, num_returns, timeout != 0, blocking), timeout))
        except GetTimeoutError:
            return set(self.node.request("wait", (ids, num_returns, False, False)))

    def contains(self, ref) -> bool:
        return False  # asking costs a round trip; get() asks once anyway

    def free(self, refs) -> None:
        node = self.node
        for r in refs:
            node.released(r if isinstance(r, bytes) else r._id)

    def usage(self) -> dict:
        return self.node.request("usage", None)


class WorkerScheduler(Scheduler):
    def __init__(self, node: WorkerNode):
        self.node = node

    def submit_task(self, spec) -> None:
        node = self.node
        fn = spec.function
        node.tell("submit", (spec.task_id, fn.function_id, fn.name, node.export(fn), node.to_driver(spec.args),
                             [r._id for r in spec.deps], [r._id for r in spec.returns], spec.resources,
                             spec.options, spec.parent_task_id, spec.name,
                             p.contained_ids(spec.args.contained_refs)))

    def create_actor(self, spec):
        node = self.node
        cls = spec.cls
        node.request("create_actor", (
            spec.actor_id, cls.function_id, cls.name, node.export(cls), node.to_driver(spec.args),
            [r._id for r in spec.deps], spec.resources, spec.options, spec.namespace, spec.is_async,
            spec.method_options, p.contained_ids(spec.args.contained_refs)))
        return None

    def submit_actor_task(self, spec) -> None:
        self.node.tell("actor_call", (
            spec.task_id, spec.actor_id, spec.method_name, self.node.to_driver(spec.args),
            [r._id for r in spec.deps], [r._id for r in spec.returns], spec.caller_id, spec.seq,
            {"retry_exceptions": spec.options.get("retry_exceptions", False),
             "max_task_retries": spec.options.get("max_task_retries")},
            spec.name, p.contained_ids(spec.args.contained_refs)))

    def get_named_actor(self, name, namespace):
        return cloudpickle.loads(self.node.request("named", (name, namespace)))

    def list_named_actors(self, namespace):
        return self.node.request("list_named", namespace)

    def kill_actor(self, actor_id, no_restart) -> None:
        self.node.tell("kill", (actor_id, no_restart))

    def cancel(self, ref, force, recursive) -> None:
        self.node.tell("cancel", (ref._id, force, recursive))

    def actor_handles_gone(self, actor_id) -> None:
        self.node.handle_released(actor_id)

    def task_blocked(self) -> None:
        pass  # a blocking get or wait says so itself; the driver lends the CPUs while it waits

    def task_unblocked(self) -> None:
        pass

    def cluster_resources(self):
        return self.node.request("resources", "total")

    def available_resources(self):
        return self.node.request("resources", "available")

    def nodes(self):
        return self.node.request("resources", "nodes")


class WorkerBackend(Backend):
    """The backend of the runtime inside a worker: every port call goes to the driver."""

    name = "worker"

    def start(self) -> None:
        node = self.config.options["node"]
        self.node_id = node.setup["node_id"]
        self.scheduler = WorkerScheduler(node)
        self.object_store = WorkerStore(node)
        self.metadata = None

    def shutdown(self) -> None:
        pass

    def info(self) -> dict:
        return {"address": None, "node_id": self.node_id, "dashboard_url": None}


def install(setup: dict) -> None:
    """Run once in each new worker (a CALL from the driver): become a node worker."""
    loop = workers.current_loop()
    for path in reversed(setup["sys_path"]):  # the driver's modules import here as they do there
        if path not in sys.path:
            sys.path.insert(0, path)
    if setup["cwd"] != os.getcwd():
        try:
            os.chdir(setup["cwd"])
        except OSError:
            pass
    node = WorkerNode(loop, setup)
    signal.signal(signal.SIGINT, node._on_sigint)
    loop.takeover = node.main
    sys.stdout.flush()
