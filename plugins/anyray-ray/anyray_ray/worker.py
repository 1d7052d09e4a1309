"""The worker side: what runs inside a Ray worker process for anyray tasks and actors.

Each anyray function becomes one Ray remote function (:func:`task_runner`)
and each anyray actor class one Ray actor class (:func:`actor_host`), made
once per process and exported by Ray once per job. They call the core's
executor (``anyray.executor.Call``), so argument loading, ``num_returns``
splitting, retries of application errors and error wrapping are the core's.

Before running user code a worker attaches an anyray Runtime to the Ray it
already runs in (:func:`ensure_runtime`), so tasks may call ``get``, ``put``,
``wait``, submit tasks and use actor handles: anyray's API inside a Ray
worker is the ray backend again, in "attached" mode.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from typing import NamedTuple

import ray

from anyray.backend_kit import (
    ActorInfo,
    BackendConfig,
    Call,
    ObjectRef,
    RemoteFailure,
    Runtime,
    TaskContext,
    attach_runtime,
    current_runtime,
    deserialize,
    detach_runtime,
    exit_is_intended,
    mark_worker_process,
    portable_classes,
    serialize,
)

from .generators import afirst_n, astream, first_n, stream
from .transport import pack, pack_returns, unpack


class Session(NamedTuple):
    """What a worker needs to join the driver's anyray job (sent once, inside each exported function)."""

    job_id: bytes
    namespace: str


_attach_lock = threading.Lock()


def ensure_runtime(session: Session) -> Runtime:
    """The anyray Runtime of ``session``'s job in this process, attached to Ray on first use.

    A worker may outlive an anyray job when the driver re-initializes anyray on
    a Ray it did not start; a runtime of another job is then replaced.
    """
    runtime = current_runtime()
    if runtime is not None and runtime.job_id == session.job_id:
        return runtime
    with _attach_lock:
        runtime = current_runtime()
        if runtime is None or runtime.job_id != session.job_id:
            from . import WORKER_OPTION, RayBackend

            old = runtime
            config = BackendConfig(namespace=session.namespace, job_id=session.job_id, options={WORKER_OPTION: True})
            runtime = attach_runtime(RayBackend, config, make_current=True)
            if ray.get_runtime_context().worker.mode == ray.WORKER_MODE:  # not a driver in Ray's local mode
                mark_worker_process(ray.util.get_node_ip_address())  # tqdm_ray's bars: Ray's driver draws them
            if old is not None:
                detach_runtime(old)  # an attached backend never stops Ray
    return runtime


def _inputs(dep_ids, dep_payloads: tuple):
    """The anyray refs of the top-level dependencies and a fetch over the values Ray resolved."""
    values = dict(zip(dep_ids, dep_payloads))

    def fetch(refs):
        return [deserialize(unpack(values[r.binary()])) for r in refs]

    return [ObjectRef(i) for i in dep_ids], fetch


def _gpu_ids(resources: dict) -> list:
    return list(ray.get_gpu_ids()) if resources.get("GPU") else []


def _was_restarted() -> bool:
    with warnings.catch_warnings():  # Ray's property warns about an API it uses itself
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


# One task invocation as the driver sends it: a plain list, which Ray encodes
# with msgpack (a tuple, or any class of ours, it would pickle on every call).
# The function itself travels once, inside the runner.
#   [task_id, name, num_returns, retry_exceptions, max_retries, resources, dep_ids, args payload]
TaskCall = list


def returns_mode(spec):
    """``num_returns`` as the worker needs it: the generator mode ("streaming", "dynamic") or how many refs."""
    mode = spec.options.get("num_returns")
    return mode if isinstance(mode, str) else len(spec.returns)


def task_call(spec) -> TaskCall:
    o = spec.options
    return [spec.task_id, spec.name, returns_mode(spec), portable_classes(o["retry_exceptions"]), o["max_retries"],
            spec.resources, [d.binary() for d in spec.deps], pack(spec.args)]



def export(target, what: str):
    """``target`` pickled by anyray, to travel inside the Ray function or class made for it.

    Ray would pickle the user's function with its own copy of cloudpickle;
    pickling it with anyray's keeps one identity for classes defined inside
    functions: an exception class raised in a worker unpickles on the driver
    as the very class the driver defined, so ``except`` catches it.
    """
    return pack(serialize(target, what=what))


class _Exported:
    """A function or class exported by :func:`export`, loaded once per process on first use."""

    __slots__ = ("payload", "target")

    def __init__(self, payload):
        self.payload = payload
        self.target = None

    def load(self):
        target = self.target
        if target is None:
            target = self.target = deserialize(unpack(self.payload))
        return target

    def __reduce__(self):
        return _Exported, (self.payload,)


def task_runner(exported, name: str, session: Session):
    """A function for ``ray.remote`` that runs the exported function through the core's executor."""
    function = _Exported(exported)

    def run(call: TaskCall, *dep_payloads):
        task_id, task_name, num_returns, retry_exceptions, max_retries, resources, dep_ids, args = call
        runtime = ensure_runtime(session)
        deps, fetch = _inputs(dep_ids, dep_payloads)
        ctx = TaskContext(task_id=task_id, name=task_name, resources=resources, gpu_ids=_gpu_ids(resources))
        call = Call(function.load(), task_name, "task", ctx, num_returns, runtime.backend.task_events,
                    retry_exceptions, max_retries)
        if inspect.isgeneratorfunction(call.target):  # a static num_returns on a generator
            return first_n(stream(call, unpack(args), deps, fetch), num_returns, task_name)
        outputs = call.run(unpack(args), deps, fetch)
        return pack_returns(outputs, num_returns)

    run.__name__ = name.rsplit(".", 1)[-1]
    run.__qualname__ = name
    return run


def stream_runner(exported, name: str, session: Session):
    """A generator function for ``ray.remote`` (``num_returns="streaming"`` / ``"dynamic"``): one payload per
    value the exported generator function yields."""
    function = _Exported(exported)

    def run(call: TaskCall, *dep_payloads):
        task_id, task_name, num_returns, retry_exceptions, max_retries, resources, dep_ids, args = call
        runtime = ensure_runtime(session)
        deps, fetch = _inputs(dep_ids, dep_payloads)
        ctx = TaskContext(task_id=task_id, name=task_name, resources=resources, gpu_ids=_gpu_ids(resources))
        call = Call(function.load(), task_name, "task", ctx, 1, runtime.backend.task_events)
        yield from stream(call, unpack(args), deps, fetch)

    run.__name__ = name.rsplit(".", 1)[-1]
    run.__qualname__ = name
    return run


# One actor method invocation, as a plain list:
#   [method, task_id, name, num_returns, retry_exceptions, max_task_retries, dep_ids, args payload]
MethodCall = list


def method_call(spec) -> MethodCall:
    o = spec.options
    return [spec.method_name, spec.task_id, spec.name, returns_mode(spec),
            portable_classes(o.get("retry_exceptions", False)), o.get("max_task_retries"),
            [d.binary() for d in spec.deps], pack(spec.args)]


class _RayCallContext(TaskContext):
    """An actor call's context whose cancel flag is Ray's: Ray flags a running sync call it cancels."""

    __slots__ = ()

    @property
    def cancelled(self) -> bool:
        try:
            return ray.get_runtime_context().is_canceled()
        except RuntimeError:  # an async actor: its calls are cancelled with asyncio.CancelledError
            return False

    @cancelled.setter
    def cancelled(self, value: bool) -> None:
        pass  # Ray's own flag is the one that counts


class ActorHost:
    """The Ray actor that holds one anyray actor instance and runs its calls via ``Call``.

    A subclass per user class (:func:`actor_host`) sets ``anyray_class``. A
    constructor failure raises from ``__init__``, so Ray marks the actor dead
    and its calls fail with Ray's ActorDiedError, translated by the caller.
    """

    anyray_class: _Exported = None

    def __init__(self, session: Session, actor_id: bytes, name: str, resources: dict, max_task_retries: int,
                 args, dep_ids: list, *dep_payloads):
        self._runtime = ensure_runtime(session)
        self._actor_id = actor_id
        self._max_task_retries = max_task_retries  # a method's own max_task_retries comes first
        self._resources = resources
        self._gpu_ids = _gpu_ids(resources)
        self._restarted = _was_restarted()
        ray_context = ray.get_runtime_context()
        self._info = ActorInfo(actor_id, name, ray_context.get_actor_name() or None, self.anyray_class.load(),
                               isinstance(self, AsyncActorHost), ray_context.current_actor)
        deps, fetch = _inputs(dep_ids, dep_payloads)
        result = Call(self.anyray_class.load(), name, "actor_creation", self._context(actor_id, name), 1,
                      self._runtime.backend.task_events).invoke(unpack(args), deps, fetch)
        if type(result) is RemoteFailure:
            raise result.error
        self._instance = result[0]

    def _context(self, task_id: bytes, name: str) -> TaskContext:
        return _RayCallContext(task_id=task_id, actor_id=self._actor_id, name=name, actor=self._info,
                           resources=self._resources,
                           gpu_ids=self._gpu_ids, restarted=self._restarted)

    def _call(self, call: MethodCall, dep_payloads: tuple):
        method, task_id, name, num_returns, retry_exceptions, max_task_retries, dep_ids, args = call
        deps, fetch = _inputs(dep_ids, dep_payloads)
        if max_task_retries is None:
            max_task_retries = self._max_task_retries
        runner = Call(getattr(self._instance, method), name, "actor_task", self._context(task_id, name),
                      num_returns, self._runtime.backend.task_events, retry_exceptions, max_task_retries)
        return runner, unpack(args), deps, fetch, num_returns

    def anyray_call(self, call: MethodCall, *dep_payloads):
        runner, args, deps, fetch, num_returns = self._call(call, dep_payloads)
        try:
            if inspect.isgeneratorfunction(runner.target):  # a static num_returns on a generator method
                return first_n(stream(runner, args, deps, fetch), num_returns, runner.name)
            return pack_returns(runner.run(args, deps, fetch), num_returns)
        except SystemExit as exc:
            _exit(exc)

    def anyray_stream(self, call: MethodCall, *dep_payloads):
        """A generator method: one payload per value the user's generator method yields."""
        runner, args, deps, fetch, _ = self._call(call, dep_payloads)
        try:
            yield from stream(runner, args, deps, fetch)
        except SystemExit as exc:
            _exit(exc)


class AsyncActorHost(ActorHost):
    """Host of an actor with ``async def`` methods: Ray runs its calls on one event loop."""

    async def anyray_call(self, call: MethodCall, *dep_payloads):
        runner, args, deps, fetch, num_returns = self._call(call, dep_payloads)
        try:
            if inspect.isasyncgenfunction(runner.target) or inspect.isgeneratorfunction(runner.target):
                return await afirst_n(astream(runner, args, deps, fetch), num_returns, runner.name)
            return pack_returns(await runner.run_async(args, deps, fetch), num_returns)
        except SystemExit as exc:
            _exit(exc)

    async def anyray_stream(self, call: MethodCall, *dep_payloads):
        runner, args, deps, fetch, _ = self._call(call, dep_payloads)
        try:
            async for payload in astream(runner, args, deps, fetch):
                yield payload
        except SystemExit as exc:
            _exit(exc)


def _exit(exc: SystemExit):
    """An actor method raised ``SystemExit``: an intended exit (code 0, ``anyray.actor.exit_actor()``)
    becomes Ray's ``exit_actor()``, which Ray knows as one (on an event loop too); any other code is
    left to Ray as a crash."""
    if exit_is_intended(exc):
        ray.actor.exit_actor()
    raise exc


def actor_host(exported, name: str, is_async: bool) -> type:
    """A host class for ``ray.remote``, named after the user's class so Ray's tools show that name."""
    base = AsyncActorHost if is_async else ActorHost
    short = name.rsplit(".", 1)[-1]
    return type(short, (base,), {"anyray_class": _Exported(exported), "__qualname__": name, "__module__": __name__})
