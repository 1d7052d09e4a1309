"""The worker side: what runs inside Dask worker processes for anyray tasks and actors.

- A task is one Dask task running :func:`run_task`: it loads the user's
  function (exported once, cached per process by function id), attaches an
  anyray Runtime to the worker's Dask client (:func:`ensure_runtime`) so the
  task may itself call ``get``, ``put``, ``wait``, submit tasks and use actor
  handles, and runs it through the core's executor.
- An actor is one Dask actor, :class:`ActorProcess`, on the worker Dask
  placed it on. It wraps the core's ``ActorHost``, so the actor has threads
  of its own (Dask's actor executor is one thread per worker, shared by all
  its actors), honours ``max_concurrency``, and starts each caller's calls
  in the order they were made: calls arriving out of order (Dask starts
  ready tasks on several threads) wait in :class:`_Ordered` for the ones
  before them.
- A method call is one Dask task running :func:`deliver`, whose arguments
  are the actor's future and the call's dependencies, so Dask resolves them
  and the call's result is an ordinary Dask future any task may depend on.
  It hands the call to the actor (in the same process when Dask placed it
  there, else through Dask's actor RPC) and waits outside the worker's
  thread pool (``secede``) so waiting calls never starve tasks of threads.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import weakref
from typing import NamedTuple

from anyray.backend_kit import (
    ActorHost,
    ActorSpec,
    ActorTaskSpec,
    BackendConfig,
    Call,
    FunctionDescriptor,
    ObjectRef,
    RemoteFailure,
    Runtime,
    TaskContext,
    attach_runtime,
    deserialize,
    detach_runtime,
    make_current,
    portable_classes,
    process_runtime,
    run_in_place,
    serialize,
    serialize_failure,
    stream_of,
    task_runtime,
)

from .generators import streamed
from .transport import pack, pack_returns, resolving, unpack


class Session(NamedTuple):
    """What a worker needs to join the driver's anyray job (travels with every task)."""

    job_id: bytes
    namespace: str


_attach_lock = threading.Lock()
_runtimes: collections.OrderedDict[bytes, Runtime] = collections.OrderedDict()  # job id -> runtime, LRU
_active: collections.Counter = collections.Counter()  # job id -> its tasks running here now
KEEP_IDLE_RUNTIMES = 8  # runtimes of jobs with nothing running here, kept for their next task


def ensure_runtime(session: Session) -> Runtime:
    """The anyray Runtime of ``session``'s job in this worker process, attached on first use.

    A worker of a shared Dask cluster serves several jobs, at once or one
    after another: each job has a runtime of its own, made current for its
    tasks only (:func:`job_context`). Runtimes of jobs with nothing running
    here are shut down beyond the ``KEEP_IDLE_RUNTIMES`` most recent.
    """
    with _attach_lock:
        runtime = _runtimes.get(session.job_id)
        if runtime is not None:
            _runtimes.move_to_end(session.job_id)
            return runtime
        from . import WORKER_OPTION, DaskBackend

        config = BackendConfig(namespace=session.namespace, job_id=session.job_id, options={WORKER_OPTION: True})
        runtime = _runtimes[session.job_id] = attach_runtime(DaskBackend, config)
        idle = [job for job in _runtimes if not _active[job] and job != session.job_id]
        stale = [_runtimes.pop(job) for job in idle[:max(len(idle) - KEEP_IDLE_RUNTIMES, 0)]]
        if process_runtime() is None or process_runtime() in stale:
            make_current(runtime)  # for threads the user's code starts, which see no task context
    for old in stale:
        detach_runtime(old)  # an attached backend never stops Dask
    return runtime


class job_context:
    """Inside a task or actor call: its job's runtime is the current one, and it counts as running."""

    def __init__(self, session: Session):
        self._session = session

    def __enter__(self) -> Runtime:
        runtime = ensure_runtime(self._session)
        with _attach_lock:
            _active[self._session.job_id] += 1
        self._scope = task_runtime(runtime)
        self._scope.__enter__()
        return runtime

    def __exit__(self, *exc) -> None:
        self._scope.__exit__(*exc)
        with _attach_lock:
            _active[self._session.job_id] -= 1
            if not _active[self._session.job_id]:
                del _active[self._session.job_id]


# -- functions and classes, exported once ------------------------------------------------------------------

_loaded: dict[bytes, object] = {}
_loaded_lock = threading.Lock()


class Exported:
    """A user function or class pickled by anyray, loaded once per process (keyed by its function id).

    anyray pickles it rather than Dask, so a class defined inside a function
    keeps one identity: an exception class raised in a worker unpickles on
    the driver as the very class the driver defined.
    """

    __slots__ = ("function_id", "payload")

    def __init__(self, function_id: bytes, payload):
        self.function_id = function_id
        self.payload = payload

    @classmethod
    def of(cls, descriptor: FunctionDescriptor, what: str) -> Exported:
        return cls(descriptor.function_id, pack(serialize(descriptor.target, what=what)))

    def load(self):
        target = _loaded.get(self.function_id)
        if target is None:
            with _loaded_lock:
                target = _loaded.get(self.function_id)
                if target is None:
                    target = _loaded[self.function_id] = deserialize(unpack(self.payload))
        return target

    def __reduce__(self):
        return Exported, (self.function_id, self.payload)


def _inputs(dep_ids, dep_payloads):
    """The anyray refs of the top-level dependencies, carrying the values Dask resolved, and their fetch."""
    return [ObjectRef(i, p) for i, p in zip(dep_ids, dep_payloads)], _fetch


def _fetch(refs):
    return [deserialize(unpack(r.native)) for r in refs]


# -- tasks -----------------------------------------------------------------------------------------------

# One task invocation: [task_id, name, num_returns, retry_exceptions, max_retries, resources, dep_ids, dep_keys,
# stream] (stream: None, or [mode, backpressure, generator id] for num_returns "streaming" and "dynamic")
# Its pickled arguments travel beside it: inline, or as the future of a scattered copy when large.
TaskCall = list


def task_call(spec) -> TaskCall:
    o = spec.options
    stream = stream_of(o)
    return [spec.task_id, spec.name, len(spec.returns), portable_classes(o["retry_exceptions"]), o["max_retries"],
            spec.resources,
            [d.binary() for d in spec.deps], [d.native.future.key for d in spec.deps],
            None if stream is None else [*stream, spec.returns[0].binary()]]


def run_task(session: Session, function: Exported, call: TaskCall, args, *dep_payloads):
    task_id, name, num_returns, retry_exceptions, max_retries, resources, dep_ids, dep_keys, stream = call
    with job_context(session) as runtime, resolving(dep_keys):
        deps, fetch = _inputs(dep_ids, dep_payloads)
        ctx = TaskContext(task_id=task_id, name=name, resources=resources)
        target = function.load()
        if stream is not None:  # a generator whose values stream as it yields them
            mode, backpressure, generator_id = stream
            target = streamed(target, mode, generator_id, backpressure, name, ctx, runtime.backend.client,
                              runtime.store)
        call = Call(target, name, "task", ctx, num_returns, runtime.backend.task_events,
                    retry_exceptions, max_retries)
        outputs = run_in_place(call, unpack(args), deps, fetch, max_retries)  # the Dask worker goes on
    return pack_returns(outputs, num_returns)


def pick(values: tuple, index: int):
    """Return ``index`` of a task's tuple of returns (one Dask task per return of ``num_returns > 1``)."""
    return values[index]


def secede_once() -> bool:
    """Leave the worker's thread pool, so this task's thread slot runs other tasks; say whether it left.

    Only a Dask task thread can (an actor's own threads hold no slot), and
    only once: a task that already left stays out until :func:`rejoin`.
    """
    from distributed.worker import secede, thread_state

    key = getattr(thread_state, "key", None)
    if key is None or getattr(thread_state, "anyray_seceded", None) == key:
        return False
    try:
        secede()
    except ValueError:
        return False
    thread_state.anyray_seceded = key
    return True


def rejoin() -> None:
    """Take a thread slot back after :func:`secede_once` (waits for one to be free, as Ray may briefly
    oversubscribe instead)."""
    from distributed import rejoin as dask_rejoin
    from distributed.worker import thread_state

    if getattr(thread_state, "anyray_seceded", None) is None:
        return
    thread_state.anyray_seceded = None
    dask_rejoin()


# -- actors ----------------------------------------------------------------------------------------------

# One method call: [actor_id, method, task_id, name, return_ids, caller_id, seq, options, dep_ids, args]
# (``args`` is set on the worker side from the payload that travelled beside it.)
MethodCall = list


def method_call(spec) -> MethodCall:
    return [spec.actor_id, spec.method_name, spec.task_id, spec.name, [r.binary() for r in spec.returns],
            spec.caller_id, spec.seq, portable_options(spec.options), [d.binary() for d in spec.deps], None]


def portable_options(options: dict) -> dict:
    """``options`` with ``retry_exceptions`` pickled apart: a class a worker cannot import fails the call
    that needs it, not Dask's reading of the message."""
    retry = options.get("retry_exceptions")
    return dict(options, retry_exceptions=portable_classes(retry)) if type(retry) is tuple else options


def job_prefix(job_id: bytes) -> str:
    """Where a job's records live in the metadata store; its driver deletes them when the job ends."""
    return f"jobs/{job_id.hex()}/"


def actor_marker(job_id: bytes, actor_id: bytes) -> str:
    """The metadata key saying an actor was made once."""
    return f"{job_prefix(job_id)}actors/{actor_id.hex()}"


MAX_TOMBSTONES = 10_000
_hosted: dict[bytes, _Hosted] = {}   # actor id -> the actor living in this process
_hosted_lock = threading.Lock()


def deliver(actor, call: MethodCall, args, *dep_payloads):
    """The Dask task of one method call: hand it to the actor, wait outside the pool, return its result."""
    call[-1] = args
    hosted = _hosted.get(call[0])
    secede_once()
    if hosted is not None:
        return hosted.call(call, dep_payloads).result()
    return actor.anyray_call(call, list(dep_payloads)).result()


class ActorProcess:
    """The Dask actor of one anyray actor. Dask drops it once no future of it is left anywhere;
    the actor then ends after the calls already made (Ray's rule for an actor whose handles are gone)."""

    def __init__(self, session: Session, cls: Exported, actor: list, args, dep_ids: list, *dep_payloads):
        actor_id, name, resources, options, namespace, is_async, method_options = actor
        runtime = ensure_runtime(session)
        with _attach_lock:
            _active[session.job_id] += 1  # for the actor's life: its job's runtime stays
        deps, _ = _inputs(dep_ids, dep_payloads)
        spec = ActorSpec(actor_id=actor_id, cls=FunctionDescriptor(cls.function_id, name, cls.load()),
                         args=unpack(args), deps=deps, resources=resources, options=options, namespace=namespace,
                         is_async=is_async, method_options=method_options)
        # Dask makes an actor again when the worker holding it dies; anyray's actor died with it.
        first = runtime.backend.metadata.compare_and_set(actor_marker(session.job_id, actor_id), None, b"made")
        self._hosted = _Hosted(spec, runtime, start=first)
        if not first:
            self._hosted.host._die(f"The actor {name} died: the Dask worker it lived on died (actors are not "
                                   f"restarted on the dask backend).")
        weakref.finalize(self, self._hosted.handles_gone)

    async def anyray_call(self, call: MethodCall, dep_payloads: list):
        return await asyncio.wrap_future(self._hosted.call(call, dep_payloads))

    async def anyray_kill(self, no_restart: bool) -> None:
        self._hosted.kill(no_restart)

    async def anyray_cancel(self, return_id: bytes) -> None:
        self._hosted.cancel(return_id)

    async def anyray_skip(self, caller_id: bytes, seq: int) -> None:
        self._hosted.arrive(caller_id, seq, None)


class _Hosted:
    """One actor in this process: the core's ActorHost, fed in per-caller order; the host's scheduler."""

    def __init__(self, spec: ActorSpec, runtime, start: bool = True):
        self.runtime = runtime
        self.events = runtime.backend.task_events
        self._lock = threading.Lock()
        self._next: dict[bytes, int] = collections.defaultdict(int)   # caller id -> next seq to start
        self._held: dict[bytes, dict[int, ActorTaskSpec]] = collections.defaultdict(dict)
        self._results: dict[bytes, tuple[concurrent.futures.Future, int]] = {}  # task id -> (future, returns)
        self._cancelled: collections.OrderedDict[bytes, None] = collections.OrderedDict()  # return ids
        # cancelled before their call arrived (bounded: a cancel of a call that had finished leaves one)
        self.host = _JobActorHost(spec, self)
        if start:
            with _hosted_lock:
                _hosted[spec.actor_id] = self
            self.host.start()

    # -- calls, in order per caller
    def call(self, call: MethodCall, dep_payloads) -> concurrent.futures.Future:
        actor_id, method, task_id, name, return_ids, caller_id, seq, options, dep_ids, args = call
        deps, _ = _inputs(dep_ids, dep_payloads)
        spec = ActorTaskSpec(task_id=task_id, actor_id=actor_id, method_name=method, args=unpack(args), deps=deps,
                             returns=[ObjectRef(i) for i in return_ids], caller_id=caller_id, seq=seq,
                             options=options, name=name)
        result = concurrent.futures.Future()
        with self._lock:
            self._results[task_id] = (result, len(return_ids))
        self.arrive(caller_id, seq, spec)
        return result

    def arrive(self, caller_id: bytes, seq: int, spec: ActorTaskSpec | None) -> None:
        """Call ``seq`` of a caller arrived (``None``: it never will); start what is now in order."""
        ready = []
        with self._lock:
            expected = self._next[caller_id]
            if seq > expected:
                self._held[caller_id][seq] = spec
            else:
                ready.append(spec)
                if seq == expected:
                    held = self._held[caller_id]
                    expected += 1
                    while expected in held:
                        ready.append(held.pop(expected))
                        expected += 1
                    self._next[caller_id] = expected
                    if not held:
                        del self._held[caller_id]
        for spec in ready:
            if spec is None:
                continue
            if any(r.binary() in self._cancelled for r in spec.returns):
                self.call_failed(spec, _cancelled(spec))
            else:
                self.host.submit(spec)

    def cancel(self, return_id: bytes) -> None:
        if not self.host.cancel(ObjectRef(return_id)):
            with self._lock:
                self._cancelled[return_id] = None
                while len(self._cancelled) > MAX_TOMBSTONES:
                    self._cancelled.popitem(last=False)

    def kill(self, no_restart: bool) -> None:
        self.host.kill(True)

    def handles_gone(self) -> None:
        self.host.terminate_after_pending()

    # -- what ActorHost calls
    def enqueue(self, demand, start) -> None:
        start(None)  # Dask placed the actor where its resources are: nothing to wait for here

    def release(self, lease) -> None:
        pass

    def fetch(self, refs):
        return _fetch(refs)

    def call_done(self, spec, outputs) -> None:
        with self._lock:
            result, n = self._results.pop(spec.task_id, (None, 0))
        if result is not None:
            result.set_result(pack_returns(outputs, n))

    def call_failed(self, spec, error: BaseException) -> None:
        with self._lock:
            result, n = self._results.pop(spec.task_id, (None, 0))
            for r in spec.returns:
                self._cancelled.pop(r.binary(), None)
        if result is not None:
            result.set_result(pack_returns([serialize_failure(RemoteFailure(error))] * n, n))

    def actor_crashed(self, host, spec, reason: str) -> None:
        host.crash(spec, reason)  # the Dask worker hosts other work: the actor restarts in place

    def actor_died(self, host) -> None:
        with _hosted_lock:
            if _hosted.get(host.spec.actor_id) is self:
                del _hosted[host.spec.actor_id]
        with _attach_lock:
            job = self.runtime.job_id
            _active[job] -= 1
            if _active[job] <= 0:
                del _active[job]
        # Calls reaching a dead actor fail at once (ActorHost.submit), so nothing waits forever.


class _JobActorHost(ActorHost):
    """The core's actor host, running the actor's code with its job's runtime current."""

    def _main(self) -> None:
        with task_runtime(self._sched.runtime):
            super()._main()

    def _run_call(self, spec) -> None:  # on a pool thread of a threaded actor, which has no context
        with task_runtime(self._sched.runtime):
            super()._run_call(spec)

    def _call_of(self, spec) -> Call:
        call = super()._call_of(spec)
        stream, call.stream = call.stream, None
        if stream is not None:  # a generator method: its values stream through Dask (see generators.py)
            runtime = self._sched.runtime
            call.target = streamed(call.target, stream.mode, stream.generator_id, stream.backpressure, call.name,
                                   call.ctx, runtime.backend.client, runtime.store)
        return call


def _cancelled(spec):
    from anyray.exceptions import TaskCancelledError

    return TaskCancelledError(f"{spec.name} was cancelled.")
