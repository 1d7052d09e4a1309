"""The scheduler of one node: resource accounting in the driver, tasks and actors in worker processes.

A task whose dependencies are sealed waits in the FIFO of its demand shape
until its resources are free, then goes to an idle worker (or a new one,
forked in a few milliseconds). A worker runs one task at a time; when it
finishes, the next task of the same shape goes to the same worker on the
same lease. Each actor gets a process of its own, started once the actor's
resources are free; its calls are sent as they are submitted, and the actor
process starts them in order (``ActorHost``).

Workers call back into this scheduler (``REQUEST``) for nested tasks,
actors and ``get``/``put``/``wait``; a worker blocked in ``get`` or ``wait``
lends its CPUs until the answer goes out. The references a worker holds are
held here on its behalf (``_Worker.borrowed``), and so are the shared-memory
ranges it reads (``_Worker.pins``); both go when the worker does.

A worker that dies mid-task has its task retried up to ``max_retries``
times; an actor whose process dies restarts while ``max_restarts`` allows.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import pickle
import signal
import threading

import cloudpickle

from anyray.actor import ActorHandle
from anyray.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    ObjectLostError,
    TaskCancelledError,
    WorkerCrashedError,
)
from anyray.executor import serialize_failure
from anyray.object_ref import ObjectRef
from anyray.policy import allows_another, call_retry_limit
from anyray.runtime import current_counter
from anyray.serialization import SerializedObject, portable_classes
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure, TaskSpec

from ..common.resources import ResourcePool
from ..common.scheduling import QueueScheduler
from . import protocol as p
from .arena import Location
from .introspection import LocalOutput, LocalRecords
from .store import ArenaObject, SharedObjectStore, to_wire
from .worker import install
from .workers import EXIT, WorkerPool, describe

log = logging.getLogger(__name__)

LATER = object()  # a request handler that answers by itself, later


def call_options(options: dict) -> dict:
    """What a worker needs of an actor method's options (not its signature, which is costly to pickle)."""
    return {"retry_exceptions": portable_classes(options.get("retry_exceptions", False)),
            "max_task_retries": options.get("max_task_retries")}


class _Task:
    __slots__ = ("spec", "shape", "state", "lease", "worker", "attempts", "held", "cancelled", "job", "node",
                 "spilled")

    def __init__(self, spec: TaskSpec, held: ArenaObject | None, job: tuple):
        self.spec = spec
        self.job = job  # (job id, namespace) of the driver it comes from
        self.shape = tuple(sorted(spec.resources.items()))
        self.state = "waiting"  # waiting -> queued -> running -> done
        self.lease = None
        self.worker: _Worker | None = None
        self.attempts = 0
        self.held = held  # the arguments, when large enough for shared memory
        self.cancelled = False
        self.node = None      # the other node it was handed to (cluster)
        self.spilled = False  # handed here by another node: it runs here


class _Worker:
    """The scheduler's view of one worker process."""

    __slots__ = ("handle", "functions", "task", "actor", "borrowed", "handles", "pins", "grants", "calls",
                 "blocked", "retiring", "dead", "remote", "job", "peer")

    def __init__(self, handle, job: tuple):
        self.handle = handle
        self.functions: set[bytes] = set()
        self.task: _Task | None = None
        self.actor: _Actor | None = None
        self.borrowed: dict[bytes, ObjectRef] = {}      # refs the worker holds, kept alive here
        self.handles: dict[bytes, ActorHandle] = {}     # actor handles it holds
        self.pins: dict[bytes, list] = {}               # key -> [ArenaObject, count] it may read
        self.grants: set[int] = set()                   # arena ranges granted, not yet sealed
        self.calls: dict[bytes, int] = {}               # tasks run per function (max_calls)
        self.blocked: set[int] = set()                  # its requests waiting with CPUs lent
        self.retiring = False
        self.dead = False
        self.remote = False  # a client on another machine: objects travel inline
        self.job = job       # the job of what it runs now (of a client: its own)
        self.peer = False    # another node of a cluster, as a client of this one


class _Actor:
    __slots__ = ("spec", "state", "worker", "lease", "restarts", "cause", "inflight", "buffered", "held",
                 "attempts", "terminate", "send_lock", "args_held", "job")

    def __init__(self, spec: ActorSpec, args_held: ArenaObject | None, job: tuple):
        self.spec = spec
        self.job = job
        self.state = "pending"  # pending -> alive -> (restarting -> alive)* -> dead
        self.worker: _Worker | None = None
        self.lease = None
        self.restarts = 0
        self.cause = ""
        self.inflight: dict[bytes, ActorTaskSpec] = {}  # submitted calls without a result, by task id
        self.buffered: list[ActorTaskSpec] = []          # calls waiting for a process
        self.held: dict[bytes, ArenaObject] = {}         # large call arguments, by task id
        self.attempts: dict[bytes, int] = {}             # retries used per call (max_task_retries)
        self.terminate = False
        self.send_lock = threading.Lock()  # calls reach the process in submission order
        self.args_held = args_held


class NodeScheduler(QueueScheduler):
    def __init__(self, session, store: SharedObjectStore, metadata, events, pool: ResourcePool, setup: dict):
        super().__init__(metadata, events, pool)
        self._store = store
        self._setup = setup
        self._tasks: dict[bytes, _Task] = {}          # by return object id, until done
        self._children: dict[bytes, list[_Task]] = {}
        self._actors: dict[bytes, _Actor] = {}
        self._call_owner: dict[bytes, _Actor] = {}     # first return id of each call in flight -> its actor
        self._workers: dict[int, _Worker] = {}
        self._idle: list[_Worker] = []
        self._functions: dict[bytes, bytes] = {}      # function id -> pickled code, exported once
        self._closed = False
        self._job = (setup["job_id"], setup["namespace"])  # of work the node's own runtime submits
        # What the parts of a node (and a cluster's parts, added through the seams below) share.
        self.lock = self._lock
        self.pool = pool
        self.store = store
        self.metadata = metadata
        self.queues = self._queues
        self.job = self._job
        # Seams: the node's own behaviour, which a cluster node replaces with parts of its own.
        self.record_sink = LocalRecords()  # task records workers send (timeline, error_info)
        self.output_sink = LocalOutput()   # what tasks print, when workers forward it
        self.placement = None     # route(task) -> True when it runs elsewhere; cancel(ref, force, recursive) -> bool
        self.objects = None       # objects living elsewhere: prefetch(ids), prefetch_deps(refs), answer_peer(out)
        self.remote_actors = None  # actors living elsewhere: create_actor, handle_of, named, handles_gone, kill
        self.remote_calls = None   # calls to actors living elsewhere: submit(spec, held), cancel(ref, ...)
        self._closing: list = []   # what else shutdown() closes, first to last
        # The requests workers and drivers send (``REQUEST``): op -> handler(worker, rid, args) -> answer.
        self.handlers: dict = {
            "abandon": self._op_abandon, "get": self._op_get, "wait": self._op_wait, "put": self._op_put,
            "put_kept": self._op_put_kept, "alloc": self._op_alloc, "submit": self._op_submit,
            "create_actor": self._op_create_actor, "actor_call": self._op_actor_call, "named": self._op_named,
            "list_named": self._op_list_named, "kill": self._op_kill, "cancel": self._op_cancel,
            "resources": self._op_resources, "usage": self._op_usage}
        events.add_source(self.record_sink.pull)
        self.workers = WorkerPool(session, on_message=self._on_message, on_exit=self._on_exit)

    def register(self, op: str, handler) -> None:
        """Serve request ``op`` with ``handler(worker, rid, args)``: its return value is the answer
        (``LATER``: the handler answers by itself, with ``respond``)."""
        self.handlers[op] = handler

    def on_shutdown(self, close) -> None:
        """Call ``close()`` when the node shuts down, before its workers stop."""
        self._closing.append(close)

    # -- helpers ----------------------------------------------------------------
    def fail(self, refs, error: BaseException) -> None:
        failure = serialize_failure(RemoteFailure(error))
        for ref in refs:
            self._store.seal(ref._id, failure)

    def blob(self, descriptor: FunctionDescriptor) -> bytes:
        blob = self._functions.get(descriptor.function_id)
        if blob is None:
            blob = self._functions[descriptor.function_id] = cloudpickle.dumps(descriptor.target, 5)
        return blob

    def own(self, args: SerializedObject | None):
        """Take a call's arguments: large ones into shared memory, small buffers copied (the caller may
        change its arrays once ``.remote()`` returns)."""
        if args.nbytes >= self._store.inline_max:
            return None, self._store.hold(args)
        return (args.copy_buffers() if args.buffers else args), None

    # -- workers ------------------------------------------------------------------
    def _spawn(self, env: dict | None = None) -> _Worker:
        handle = self.workers.start_worker(env)
        worker = _Worker(handle, self._job)
        self._workers[handle.worker_id] = worker
        handle.call_async(install, self._setup).add_done_callback(self._installed)
        return worker

    @staticmethod
    def _installed(future) -> None:
        exc = future.exception()
        if exc is not None and not isinstance(exc, WorkerCrashedError):
            log.warning("a worker failed to start: %r", exc)

    def _send(self, worker: _Worker, tag: int, body) -> bool:
        try:
            worker.handle.send(tag, p.dumps(body))
            return True
        except WorkerCrashedError:
            return False  # its exit is handled by _on_exit

    @staticmethod
    def _exit(worker: _Worker) -> None:
        try:
            worker.handle.send(EXIT)
        except WorkerCrashedError:
            pass

    def _wire(self, worker: _Worker, key: bytes, entry):
        """How ``entry`` travels to ``worker``: inline bytes, or its location, pinned for the worker under ``key``."""
        if type(entry) is ArenaObject:
            if worker.remote:
                return self.copy_out(entry)
            with self._lock:
                if worker.dead:  # the message will not reach it; nothing would unpin
                    return entry.loc
                self._store.pin(entry)
                pin = worker.pins.get(key)
                if pin is None:
                    worker.pins[key] = [entry, 1]
                else:
                    pin[1] += 1
            return entry.loc
        if entry is None:
            entry = serialize_failure(RemoteFailure(ObjectLostError(
                f"Object {key.hex()} is no longer in the store: every reference to it was dropped.")))
        return to_wire(entry)

    def copy_out(self, entry: ArenaObject) -> tuple:
        """The inline wire form of an object in shared memory, for a reader that cannot map it."""
        store = self._store
        store.pin(entry)
        try:
            obj = store.arena.read(entry.loc)
            return bytes(obj.data), [memoryview(b).tobytes() for b in obj.buffers]
        finally:
            store.unpin(entry)

    def _unpin(self, worker: _Worker, key: bytes) -> None:
        with self._lock:
            pin = worker.pins.get(key)
            if pin is None:
                return
            pin[1] -= 1
            if not pin[1]:
                del worker.pins[key]
        self._store.unpin(pin[0])

    def _apply_refs(self, worker: _Worker, changes) -> None:
        objects, handles, unpins = changes
        counter = current_counter()
        borrowed = worker.borrowed
        for oid, sign in objects:
            if sign > 0:
                if oid not in borrowed:
                    borrowed[oid] = ObjectRef(oid, None, counter)
            else:
                borrowed.pop(oid, None)
        for actor_id, sign in handles:
            if sign > 0:
                if actor_id not in worker.handles:
                    handle = self.handle_of(actor_id)
                    if handle is not None:
                        worker.handles[actor_id] = handle
            else:
                worker.handles.pop(actor_id, None)
        for key in unpins:
            self._unpin(worker, key)

    def _contained(self, worker: _Worker, contained) -> list:
        """Driver-side references for the ids a value holds, so the stored value keeps them alive."""
        if not contained:
            return []
        counter = current_counter()
        out = []
        for kind, ident in contained:
            if kind == p.OBJECT:
                out.append(ObjectRef(ident, None, counter))
            else:
                handle = self.handle_of(ident)
                if handle is not None:
                    out.append(handle)
        return out

    def _seal_wires(self, worker: _Worker, ids, wires, contained) -> None:
        for oid, wire, inner in zip(ids, wires, contained):
            if type(wire) is Location:
                worker.grants.discard(wire.offset)
            self._store.seal_wire(oid, wire, self._contained(worker, inner))

    def _on_message(self, handle, tag: int, payload) -> None:
        worker = self._workers.get(handle.worker_id)
        if worker is None or self._closed:
            return
        changes, body = pickle.loads(payload)
        if changes is not None:
            self._apply_refs(worker, changes)
        if tag == p.RESULT:
            task_id, wires, contained, records = body
            if records:
                self.record_sink.add(worker, records)
            if worker.actor is not None:
                self._call_result(worker.actor, worker, task_id, wires, contained)
            else:
                self._task_result(worker, task_id, wires, contained)
        elif tag == p.REQUEST:
            self._on_request(worker, body)
        elif tag == p.OUTPUT:
            self.output_sink.add(worker, body)
        elif tag == p.ACTOR_DIED:
            actor = worker.actor
            if actor is not None and actor.worker is worker:
                self._actor_dead(actor, body[1])
                self._exit(worker)

    def _on_exit(self, handle) -> None:
        worker = self._workers.pop(handle.worker_id, None)
        if worker is None or self._closed:
            return
        with self._lock:
            worker.dead = True
            if worker in self._idle:
                self._idle.remove(worker)
            task, worker.task = worker.task, None
            pins, worker.pins = worker.pins, {}
            grants, worker.grants = worker.grants, set()
        worker.borrowed.clear()
        worker.handles.clear()
        for entry, count in pins.values():
            for _ in range(count):
                self._store.unpin(entry)
        for offset in grants:
            self._store.forget_grant(offset)
        if worker.actor is not None:
            self._actor_exited(worker.actor, worker)
            return
        if task is None:
            return
        if task.cancelled:
            with self._lock:
                self.finish(task)
        self._resources.release(task.lease)
        spec = task.spec
        retry = False
        with self._lock:
            if task.state == "running" and not task.cancelled:
                retries = spec.options["max_retries"]
                if allows_another(retries, task.attempts):
                    task.attempts += 1
                    task.state = "queued"
                    task.lease = task.worker = None
                    self._queues.setdefault(task.shape, collections.deque()).appendleft(task)
                    retry = True
        if not retry and task.state == "running" and not task.cancelled:
            self.finish(task)
            self.fail(spec.returns, WorkerCrashedError(
                f"The worker running {spec.name} (pid {handle.pid}) died: {describe(handle.exit.returncode)}"
                f"{'' if not task.attempts else f', on each of {task.attempts + 1} attempts'}. "
                f"Raise max_retries to retry it more often."))
        self._dispatch()

    # -- tasks ------------------------------------------------------------------------
    def submit_task(self, spec: TaskSpec, held: ArenaObject | None = None, job: tuple | None = None,
                    handed: bool = False) -> None:
        """``handed``: another node of a cluster handed the task here, to run here."""
        if self.objects is not None and spec.deps:
            self.objects.prefetch_deps(spec.deps)
        if held is None:
            spec.args, held = self.own(spec.args)
        task = _Task(spec, held, job or self._job)
        if handed:
            task.spilled = True
        self._admit(task, self._tasks, self._children, self._store)

    def ready(self, task: _Task) -> None:
        """``task``'s dependencies are sealed: run it here, or where the placement seam sends it."""
        if self.placement is not None and self.placement.route(task):
            return
        self.ready_here(task)

    def ready_here(self, task: _Task) -> None:
        with self._lock:
            if task.state != "waiting":
                return  # cancelled while it waited for its dependencies
            task.state = "queued"
            if not self._queues.get(task.shape):  # nothing of its shape waits: take its resources now
                lease = self._resources.acquire(task.spec.resources)
                if lease is not None:
                    self._start(task, lease)
                    return
            self._queue_of(task.shape, task)
        self._dispatch()

    def _start(self, task: _Task, lease) -> None:
        with self._lock:
            if task.state != "queued":
                worker = None
            else:
                task.state = "running"
                task.lease = lease
                worker = self._idle.pop() if self._idle else None
                if worker is None:
                    worker = self._spawn()
                worker.task = task
                task.worker = worker
        if worker is None:
            self.release(lease)
            return
        self._send_task(worker, task)

    def _send_task(self, worker: _Worker, task: _Task) -> None:
        spec = task.spec
        fn = spec.function
        fn_id = fn.function_id
        blob = None
        if fn_id not in worker.functions:
            blob = self.blob(fn)
            worker.functions.add(fn_id)
        store = self._store
        deps = {oid: self._wire(worker, oid, store.entry(oid)) for oid in dict.fromkeys(r._id for r in spec.deps)}
        args = self._wire(worker, spec.task_id, task.held) if task.held is not None else to_wire(spec.args)
        options = spec.options
        job = None
        if task.job is not worker.job and task.job != worker.job:  # sent only when it changes
            job = worker.job = task.job
        self._send(worker, p.TASK, (
            spec.task_id, fn_id, blob, args, [r._id for r in spec.deps], deps, [r._id for r in spec.returns],
            spec.name, spec.resources, task.lease.gpu_ids, portable_classes(options["retry_exceptions"]),
            options["max_retries"], job))

    def _task_result(self, worker: _Worker, task_id: bytes, wires, contained) -> None:
        task = worker.task
        if task is not None and task_id is None:  # the worker could not read the task: one failure for all
            task_id = task.spec.task_id
            wires, contained = wires * len(task.spec.returns), contained * len(task.spec.returns)
        if task is None or task.spec.task_id != task_id:
            return
        spec = task.spec
        self._seal_wires(worker, [r._id for r in spec.returns], wires, contained)
        lease = task.lease
        max_calls = spec.options.get("max_calls") or 0
        nxt = None
        with self._lock:
            worker.task = None
            self.finish(task)
            if max_calls:
                fn_id = spec.function.function_id
                worker.calls[fn_id] = count = worker.calls.get(fn_id, 0) + 1
                if count >= max_calls:
                    worker.retiring = True
            if not worker.retiring:
                nxt = self._next_queued(task.shape, lease)
                if nxt is not None:
                    nxt.state, nxt.lease, nxt.worker = "running", lease, worker
                    worker.task = nxt
                else:
                    self._idle.append(worker)
        if nxt is not None:
            self._send_task(worker, nxt)
            return
        if worker.retiring:
            self._exit(worker)
        self.release(lease)

    def finish(self, task: _Task) -> None:
        """Under the lock (re-entrant): the task is settled; forget it and drop its held arguments."""
        spec = task.spec
        task.state = "done"
        for ref in spec.returns:
            self._tasks.pop(ref._id, None)
        siblings = self._children.get(spec.parent_task_id) if spec.parent_task_id else None
        if siblings is not None:
            if task in siblings:
                siblings.remove(task)
            if not siblings:
                del self._children[spec.parent_task_id]
        self._children.pop(spec.task_id, None)
        if task.held is not None:
            held, task.held = task.held, None
            self._store.drop(held)

    def cancel(self, ref, force: bool, recursive: bool) -> None:
        if self.remote_calls is not None and self.remote_calls.cancel(ref, force, recursive):
            return
        if self.placement is not None and self.placement.cancel(ref, force, recursive):
            return
        with self._lock:
            task = self._tasks.get(ref._id)
        if task is not None:
            self._cancel_task(task, force, recursive)
            return
        for actor in list(self._actors.values()):
            if self._cancel_call(actor, ref):
                return

    def _cancel_task(self, task: _Task, force: bool, recursive: bool) -> None:
        error = TaskCancelledError(f"Task {task.spec.name} was cancelled.")
        with self._lock:
            state, worker = task.state, task.worker
            if state in ("waiting", "queued"):
                self.finish(task)
            elif state == "running" and force:
                task.cancelled = True
                worker.retiring = True
            children = list(self._children.get(task.spec.task_id, ())) if recursive else []
        if state in ("waiting", "queued"):
            self.fail(task.spec.returns, error)
        elif state == "running":
            if force:
                self.fail(task.spec.returns, error)
                worker.handle.kill()
            elif self._send(worker, p.CANCEL, task.spec.task_id) and worker.handle.pid and worker.handle.alive:
                try:  # the message says which task; the signal interrupts it even in user code or sleep()
                    os.kill(worker.handle.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for child in children:
            self._cancel_task(child, force, recursive)

    def task_of(self, oid: bytes) -> _Task | None:
        """The task (not yet done) that returns ``oid``."""
        with self._lock:
            return self._tasks.get(oid)

    def has_task(self, oid: bytes) -> bool:
        return oid in self._tasks

    def run_here(self, refs) -> None:
        """The calling thread is about to wait for ``refs``: read their producers' results off their
        workers' connections itself, which saves a hand-off from the reader threads."""
        store = self._store
        for ref in refs:
            if store.contains(ref):
                continue
            task = self._tasks.get(ref._id)
            worker = task.worker if task is not None else None
            if worker is None:
                actor = self._call_owner.get(ref._id)
                worker = actor.worker if actor is not None else None
            if worker is None:
                return  # not running anywhere yet: wait for it the ordinary way
            worker.handle.read_until(functools.partial(store.contains, ref))

    # -- clients: drivers connected to this node's daemon ------------------------------------
    def add_client(self, handle, shared: bool, job: tuple, peer: bool = False) -> None:
        """Serve a driver's connection (``WorkerPool.adopt``) as a worker's: the same requests, and what
        it holds is released when it goes. ``shared``: it maps this node's shared memory; ``job``: its
        job id and namespace, which the tasks and actors it starts (and theirs) run in."""
        worker = _Worker(handle, job)
        worker.remote = not shared
        worker.peer = peer
        self._workers[handle.worker_id] = worker

    def state(self, kind: str) -> list[dict]:
        """What ``anyray list`` shows of this node: its ``actors``, ``tasks`` or ``objects``."""
        node = self._resources.node_id
        if kind == "actors":
            return [{"actor_id": a.spec.actor_id.hex(), "class_name": a.spec.cls.name, "state": a.state.upper(),
                     "name": a.spec.options.get("name") or "", "pid": a.worker.handle.pid if a.worker else None,
                     "restarts": a.restarts, "node_id": node} for a in list(self._actors.values())]
        if kind == "tasks":
            return [{"task_id": t.spec.task_id.hex(), "name": t.spec.name, "state": t.state.upper(),
                     "pid": t.worker.handle.pid if t.worker else None, "node_id": node}
                    for t in {id(t): t for t in list(self._tasks.values())}.values()]
        if kind == "objects":
            out = []
            for oid, entry in list(self._store._objects.items()):
                shared = type(entry) is ArenaObject
                out.append({"object_id": oid.hex(), "size": entry.nbytes, "shared_memory": shared, "node_id": node})
            return out
        raise ValueError(f"Nothing to list called {kind!r}; pick actors, tasks or objects.")

    # -- requests from workers ------------------------------------------------------------
    def _on_request(self, worker: _Worker, body) -> None:
        rid, op, args = body
        try:
            handler = self.handlers.get(op)
            if handler is None:
                raise AttributeError(f"This node serves no request {op!r}.")
            value = handler(worker, rid, args)
        except Exception as exc:  # noqa: BLE001 - the error goes back to the worker's call site
            if rid:
                self.respond(worker, rid, False, exc)
            return
        if rid and value is not LATER:
            self.respond(worker, rid, True, value)

    def respond(self, worker: _Worker, rid: int, ok: bool, value) -> None:
        try:
            body = p.dumps((rid, ok, value))
        except Exception as exc:  # noqa: BLE001 - an answer that cannot travel becomes an error
            body = p.dumps((rid, False, RuntimeError(f"The answer could not be pickled: {exc!r}")))
        try:
            worker.handle.send(p.RESPONSE, body)
        except WorkerCrashedError:
            pass

    def _lend(self, worker: _Worker, rid: int) -> None:
        """The worker's request ``rid`` waits: lend the CPUs of what it runs until ``_reclaim(rid)``."""
        lease = worker.task.lease if worker.task is not None else worker.actor.lease if worker.actor else None
        with self._lock:
            worker.blocked.add(rid)
            if len(worker.blocked) > 1 or lease is None:
                return
        self._resources.lend_cpus(lease)
        self._dispatch()

    def _reclaim(self, worker: _Worker, rid: int) -> None:
        lease = worker.task.lease if worker.task is not None else worker.actor.lease if worker.actor else None
        with self._lock:
            if rid not in worker.blocked:
                return
            worker.blocked.discard(rid)
            if worker.blocked or lease is None:
                return
        self._resources.reclaim_cpus(lease)

    def _op_abandon(self, worker: _Worker, rid: int, abandoned: int):
        self._reclaim(worker, abandoned)  # its answer still goes out when ready; the worker drops it

    def _op_get(self, worker: _Worker, rid: int, args):
        ids, blocking, now = args
        if self.objects is not None:
            self.objects.prefetch(ids)
        store = self._store

        def answer():
            return self._answer(worker, ids)

        missing = set(ids).difference(store.ready(ids))
        if not missing:
            return answer()
        if now:
            raise GetTimeoutError(f"get() timed out after 0 s: {len(missing)} of {len(ids)} objects are not ready. "
                                  f"Raise the timeout, or use wait() to take what is ready.")
        if blocking:
            self._lend(worker, rid)

        def later():
            self._reclaim(worker, rid)
            self.respond(worker, rid, True, answer())
        store.when_sealed(missing, None, later)
        return LATER

    def _answer(self, worker: _Worker, ids) -> list:
        """The objects ``ids`` (sealed) as they travel to ``worker``: ``(id, wire)`` each."""
        store = self._store
        out = []
        for oid in ids:
            entry = store.entry(oid)
            out.append((oid, self._wire(worker, oid, entry)))
            inner = getattr(entry, "contained_refs", None)
            if inner:  # the worker will hold these once it unpickles the value
                for ref in inner:
                    if type(ref) is ObjectRef and ref._id not in worker.borrowed:
                        worker.borrowed[ref._id] = ref
        if worker.peer:  # another node of a cluster also learns where the references inside live
            return self.objects.answer_peer(out)
        return out

    def _op_wait(self, worker: _Worker, rid: int, args):
        ids, num_returns, may_wait, blocking = args
        if self.objects is not None:
            self.objects.prefetch(ids)
        store = self._store
        ready = store.ready(ids)
        if len(ready) >= num_returns or not may_wait:
            return ready
        if blocking:
            self._lend(worker, rid)

        def later():
            self._reclaim(worker, rid)
            self.respond(worker, rid, True, store.ready(ids))
        store.when_sealed(set(ids), num_returns, later)
        return LATER

    def _op_put(self, worker: _Worker, rid: int, args):
        oid, wire, contained = args
        self._seal_wires(worker, [oid], [wire], [contained])

    def _op_put_kept(self, worker: _Worker, rid: int, args):
        """A put whose writer keeps reading the object in place: its range is pinned for the writer, as
        for a ``get`` (the writer unpins when its views are gone)."""
        oid, wire, contained = args
        self._seal_wires(worker, [oid], [wire], [contained])
        entry = self._store.entry(oid)
        if type(entry) is ArenaObject:
            self._wire(worker, oid, entry)

    def _op_alloc(self, worker: _Worker, rid: int, nbytes: int):
        counter = current_counter()
        if counter is not None:  # objects whose last reference just went give their memory back first
            counter.drain()
        grant = self._store.reserve(nbytes)
        worker.grants.add(grant.offset)
        return grant

    def args_from(self, worker: _Worker, wire, contained):
        """A call's arguments sent by a worker: ``(SerializedObject, None)`` or ``(None, held ArenaObject)``."""
        refs = self._contained(worker, contained)
        if type(wire) is Location:
            worker.grants.discard(wire.offset)
            held = ArenaObject(wire, refs)
            held.pins = 1
            return None, held
        data, buffers = wire
        return SerializedObject(data, buffers, refs), None

    def descriptor(self, worker: _Worker, fn_id: bytes, name: str, blob: bytes | None) -> FunctionDescriptor:
        if blob is not None:
            self._functions.setdefault(fn_id, blob)
        worker.functions.add(fn_id)
        return FunctionDescriptor(fn_id, name, None)

    def _op_submit(self, worker: _Worker, rid: int, args):
        (task_id, fn_id, fn_name, blob, args_wire, dep_ids, return_ids, resources, options, parent, name,
         contained) = args
        counter = current_counter()
        call_args, held = self.args_from(worker, args_wire, contained)
        spec = TaskSpec(task_id=task_id, function=self.descriptor(worker, fn_id, fn_name, blob), args=call_args,
                        deps=[ObjectRef(i, None, counter) for i in dep_ids],
                        returns=[ObjectRef(i, None, counter) for i in return_ids], resources=resources,
                        options=options, parent_task_id=parent, name=name)
        self.submit_task(spec, held, worker.job)

    def _op_create_actor(self, worker: _Worker, rid: int, args):
        (actor_id, cls_id, cls_name, blob, args_wire, dep_ids, resources, options, namespace, is_async,
         method_options, contained) = args
        call_args, held = self.args_from(worker, args_wire, contained)
        counter = current_counter()
        spec = ActorSpec(actor_id=actor_id, cls=self.descriptor(worker, cls_id, cls_name, blob), args=call_args,
                         deps=[ObjectRef(i, None, counter) for i in dep_ids], resources=resources, options=options,
                         namespace=namespace, is_async=is_async, method_options=method_options)
        winner = self.create_actor(spec, held, worker.job)
        if winner is None:
            return None
        worker.handles.setdefault(winner._actor_id, winner)
        return cloudpickle.dumps(winner)  # get_if_exists lost the race: the caller gets the winner's actor

    def _op_actor_call(self, worker: _Worker, rid: int, args):
        (task_id, actor_id, method, args_wire, dep_ids, return_ids, caller_id, seq, options, name,
         contained) = args
        call_args, held = self.args_from(worker, args_wire, contained)
        counter = current_counter()
        spec = ActorTaskSpec(task_id=task_id, actor_id=actor_id, method_name=method, args=call_args,
                             deps=[ObjectRef(i, None, counter) for i in dep_ids],
                             returns=[ObjectRef(i, None, counter) for i in return_ids], caller_id=caller_id,
                             seq=seq, options=options, name=name)
        self.submit_actor_task(spec, held)

    def _op_named(self, worker: _Worker, rid: int, args):
        handle = self.get_named_actor(*args)
        if handle is not None:
            worker.handles.setdefault(handle._actor_id, handle)
        return cloudpickle.dumps(handle)

    def _op_list_named(self, worker: _Worker, rid: int, namespace):
        return self.list_named_actors(namespace)

    def _op_kill(self, worker: _Worker, rid: int, args):
        self.kill_actor(*args)

    def _op_cancel(self, worker: _Worker, rid: int, args):
        oid, force, recursive = args
        self.cancel(ObjectRef(oid), force, recursive)

    def _op_resources(self, worker: _Worker, rid: int, kind: str):
        return {"total": self.cluster_resources, "available": self.available_resources,
                "nodes": self.nodes}[kind]()

    def _op_usage(self, worker: _Worker, rid: int, args):
        return self._store.usage()

    # -- resources while blocked (driver threads are not tasks) ------------------------------
    def task_blocked(self) -> None:
        pass

    def task_unblocked(self) -> None:
        pass

    # -- actors -------------------------------------------------------------------------
    def handle_of(self, actor_id: bytes):
        actor = self._actors.get(actor_id)
        if actor is None:
            return self.remote_actors.handle_of(actor_id) if self.remote_actors is not None else None
        return ActorHandle(actor_id, actor.spec.cls.name, actor.spec.method_options)

    def has_actor(self, actor_id: bytes) -> bool:
        """Whether the actor lives on this node."""
        return actor_id in self._actors

    def create_actor(self, spec: ActorSpec, held: ArenaObject | None = None, job: tuple | None = None):
        if self.remote_actors is not None:
            return self.remote_actors.create_actor(spec, held, job)
        return self.create_actor_here(spec, held, job)

    def create_actor_here(self, spec: ActorSpec, held: ArenaObject | None = None, job: tuple | None = None,
                          restarts: int = 0):
        """Create the actor on this node (``restarts``: how often it restarted on nodes that died)."""
        winner = self.names.claim(spec)
        if winner is not None:  # get_if_exists, and another caller created it first
            if held is not None:
                self._store.drop(held)
            return winner
        if spec.resources:
            self._check_feasible(spec.actor_id, spec.cls.name, spec.resources)
        if held is None and spec.args is not None:
            spec.args, held = self.own(spec.args)
        actor = _Actor(spec, held, job or self._job)
        actor.restarts = restarts
        with self._lock:
            self._actors[spec.actor_id] = actor
        self.enqueue(spec.resources, lambda lease: self._actor_lease(actor, lease))
        return None

    def _actor_lease(self, actor: _Actor, lease) -> None:
        with self._lock:
            if actor.state == "dead":
                dead = True
            else:
                dead = False
                actor.lease = lease
        if dead:
            self.release(lease)
            return
        self._start_actor_process(actor)

    def _start_actor_process(self, actor: _Actor) -> None:
        spec = actor.spec
        gpu_ids = actor.lease.gpu_ids
        worker = self._spawn({"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpu_ids)} if gpu_ids else None)
        worker.actor = actor
        worker.job = actor.job
        cls = spec.cls
        blob = self.blob(cls)
        worker.functions.add(cls.function_id)
        args = self._wire(worker, spec.actor_id, actor.args_held) if actor.args_held is not None \
            else to_wire(spec.args)
        with actor.send_lock:
            with self._lock:
                if actor.state == "dead":
                    worker.handle.kill()
                    return
                actor.worker = worker
                actor.state = "alive"
                buffered, actor.buffered = actor.buffered, []
            self._send(worker, p.ACTOR, ("create", (
                spec.actor_id, cls.function_id, blob, cls.name, args, [r._id for r in spec.deps], spec.resources,
                spec.options, spec.namespace, spec.is_async, gpu_ids, actor.restarts, actor.job)))
            for call in buffered:
                self._send_call(actor, worker, call)
            if actor.terminate:
                self._send(worker, p.ACTOR, ("terminate", None))

    def _send_call(self, actor: _Actor, worker: _Worker, spec: ActorTaskSpec) -> None:
        held = actor.held.get(spec.task_id)
        args = self._wire(worker, spec.task_id, held) if held is not None else to_wire(spec.args)
        self._send(worker, p.ACTOR, ("call", (
            spec.task_id, spec.method_name, args, [r._id for r in spec.deps], [r._id for r in spec.returns],
            call_options(spec.options), spec.name, spec.caller_id, spec.seq)))

    def submit_actor_task(self, spec: ActorTaskSpec, held: ArenaObject | None = None) -> None:
        actor = self._actors.get(spec.actor_id)
        if actor is None:
            if self.remote_calls is not None and self.remote_calls.submit(spec, held):
                return
            self.fail(spec.returns, ActorDiedError(f"No actor with id {spec.actor_id.hex()} exists in this job."))
            return
        if held is None:
            spec.args, held = self.own(spec.args)
        with actor.send_lock:
            with self._lock:
                dead = actor.state == "dead"
                if not dead:
                    actor.inflight[spec.task_id] = spec
                    if spec.returns:
                        self._call_owner[spec.returns[0]._id] = actor
                    if held is not None:
                        actor.held[spec.task_id] = held
                    worker = actor.worker if actor.state == "alive" else None
                    if worker is None:
                        actor.buffered.append(spec)
            if not dead and worker is not None:
                self._send_call(actor, worker, spec)
        if dead:
            if held is not None:
                self._store.drop(held)
            self.fail(spec.returns, ActorDiedError(actor.cause))

    def _call_result(self, actor: _Actor, worker: _Worker, task_id: bytes, wires, contained) -> None:
        with self._lock:
            spec = actor.inflight.pop(task_id, None)
            if spec is not None and spec in actor.buffered:  # done by the old process after all
                actor.buffered.remove(spec)
            held = actor.held.pop(task_id, None)
            actor.attempts.pop(task_id, None)
            if spec is not None and spec.returns:
                self._call_owner.pop(spec.returns[0]._id, None)
        if held is not None:
            self._store.drop(held)
        if spec is not None:
            self._seal_wires(worker, [r._id for r in spec.returns], wires, contained)

    def _cancel_call(self, actor: _Actor, ref) -> bool:
        with self._lock:
            spec = next((s for s in actor.inflight.values() if ref in s.returns), None)
            if spec is None:
                return False
            queued = spec in actor.buffered
            held = None
            if queued:
                actor.buffered.remove(spec)
                actor.inflight.pop(spec.task_id, None)
                actor.attempts.pop(spec.task_id, None)
                held = actor.held.pop(spec.task_id, None)
                self._call_owner.pop(ref._id, None)
            worker = actor.worker
        if held is not None:
            self._store.drop(held)
        if queued:
            self.fail(spec.returns, TaskCancelledError(f"{spec.name} was cancelled."))
        elif worker is not None and self._send(worker, p.ACTOR, ("cancel", ref._id)) \
                and not actor.spec.is_async and actor.spec.max_concurrency == 1 \
                and worker.handle.pid and worker.handle.alive:
            try:  # a sync actor runs its call on the thread that reads: the signal makes it read the cancel
                os.kill(worker.handle.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        return True

    def _actor_exited(self, actor: _Actor, worker: _Worker) -> None:
        how = describe(worker.handle.exit.returncode) if worker.handle.exit else "exit status unknown"
        self._restart_or_die(actor, worker, f"The actor {actor.spec.cls.name} died: its process {how}")

    def _restart_or_die(self, actor: _Actor, worker: _Worker, cause: str) -> None:
        """The actor's process is gone (or going): restart it while ``max_restarts`` allows, else it is dead."""
        spec = actor.spec
        max_restarts = spec.options["max_restarts"]
        retried, failed = [], []
        with self._lock:
            if actor.worker is not worker or actor.state == "dead":
                return
            actor.worker = None
            if not allows_another(max_restarts, actor.restarts):
                restart = False
            else:
                restart = True
                actor.restarts += 1
                actor.state = "restarting"
                for call in list(actor.inflight.values()):
                    if call in actor.buffered:
                        continue
                    used = actor.attempts.get(call.task_id, 0)
                    if allows_another(call_retry_limit(call.options, spec.options), used):
                        actor.attempts[call.task_id] = used + 1
                        retried.append(call)
                    else:
                        actor.inflight.pop(call.task_id, None)
                        failed.append((call, actor.held.pop(call.task_id, None)))
                retried.sort(key=lambda c: c.seq)
                actor.buffered[:0] = retried
        if not restart:
            self._actor_dead(actor, f"{cause}." if not actor.cause else actor.cause)
            return
        for call, held in failed:
            if held is not None:
                self._store.drop(held)
            self.fail(call.returns, ActorDiedError(f"{cause} while running {call.name}; it is restarting "
                                                   f"(pass max_task_retries to retry such calls)."))
        self._start_actor_process(actor)

    def _actor_dead(self, actor: _Actor, cause: str) -> None:
        with self._lock:
            if actor.state == "dead":
                return
            actor.state = "dead"
            actor.cause = cause
            calls = list(actor.inflight.values())
            actor.inflight.clear()
            actor.buffered.clear()
            held = list(actor.held.values())
            actor.held.clear()
            lease, actor.lease = actor.lease, None
            args_held, actor.args_held = actor.args_held, None
        for entry in held + ([args_held] if args_held is not None else []):
            self._store.drop(entry)
        for call in calls:
            self.fail(call.returns, ActorDiedError(cause))
        self.names.release(actor.spec)
        if lease is not None:
            self.release(lease)

    def get_named_actor(self, name: str, namespace: str):
        actor_id = self.names.actor_id(name, namespace)
        actor = self._actors.get(actor_id) if actor_id is not None else None
        if actor is None or actor.state == "dead":
            return self.remote_actors.named(name, namespace) if self.remote_actors is not None else None
        return ActorHandle(actor.spec.actor_id, actor.spec.cls.name, actor.spec.method_options)

    def actor_handles_gone(self, actor_id: bytes) -> None:
        if self.remote_actors is not None and self.remote_actors.handles_gone(actor_id):
            return
        actor = self._actors.get(actor_id)
        if actor is None or actor.spec.options["lifetime"] == "detached":
            return
        with actor.send_lock:
            with self._lock:
                if actor.state == "dead" or actor.terminate:
                    return
                actor.terminate = True
                worker = actor.worker if actor.state == "alive" else None
            if worker is not None:
                self._send(worker, p.ACTOR, ("terminate", None))

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        if self.remote_actors is not None and self.remote_actors.kill(actor_id, no_restart):
            return
        actor = self._actors.get(actor_id)
        if actor is None:
            return
        max_restarts = actor.spec.options["max_restarts"]
        with self._lock:
            if actor.state == "dead":
                return
            worker = actor.worker
            restart = not no_restart and allows_another(max_restarts, actor.restarts)
        if not restart:
            self._actor_dead(actor, f"The actor {actor.spec.cls.name} is dead: it was killed with anyray.kill().")
        elif worker is not None:  # calls from now on go to the new process, as if the old one had died
            self._restart_or_die(actor, worker, f"The actor {actor.spec.cls.name} was killed with anyray.kill()")
        if worker is not None:
            worker.handle.kill()

    def shutdown(self) -> None:
        for close in self._closing:
            close()
        self._closed = True
        self.workers.close()
