"""The runtime of one job: the backend it runs on and the policy every backend shares.

``Runtime`` turns API calls into specs, validates them, counts references
and raises stored failures; the backend only schedules and stores. The one
process-wide global is the current runtime (``current.py``).
"""

from __future__ import annotations

import collections
import operator
import threading
from collections.abc import Sequence
from typing import Any

from . import ids, runtime_env_setup, serialization, waiting
from . import options as opts
from .actor import ActorHandle
from .context import current_task
from .current import (  # noqa: F401 - the adapters take them from here
    current_counter,
    current_handle_counter,
    current_runtime,
    process_runtime,
    set_current,
    task_runtime,
)
from .events import JobEvents
from .exceptions import ActorNameTaken
from .generators import ObjectRefGenerator, wait_with_generators
from .object_ref import ObjectRef
from .ports.backend import Backend, BackendConfig
from .specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure, TaskSpec


class ReferenceCounter:
    """Counts live ObjectRefs per object id in this process; frees an object at zero.

    ``decref`` runs from ``ObjectRef.__del__``, which the garbage collector
    may call in the middle of any code, including code holding our locks. So
    a decref only appends to a queue (atomic, lock-free); the queue is
    drained under the lock from ordinary calls (``drain``). Increments are
    immediate, so a count can only be too high for a moment, never too low.
    """

    def __init__(self, free):
        self._counts: dict[bytes, int] = {}
        self._pending: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self._free = free

    def incref(self, object_id: bytes) -> None:
        with self._lock:
            self._counts[object_id] = self._counts.get(object_id, 0) + 1

    def new_refs(self, n: int) -> list[ObjectRef]:
        """``n`` refs to new object ids, counted here (one lock round for all of them; none for one)."""
        if n == 1:  # a new id: no other thread knows it, so no lock is needed to count it
            ref = ObjectRef(_new_id(), None, None)
            self._counts[ref._id] = 1
            ref._counter = self
            return [ref]
        refs = [ObjectRef(ids.new_id()) for _ in range(n)]
        with self._lock:
            counts = self._counts
            for ref in refs:
                counts[ref._id] = 1
                ref._counter = self
        return refs

    def if_unreferenced(self, object_id: bytes, fn) -> None:
        """Call ``fn()`` under the counter's lock if ``object_id`` has no live reference here now
        (so no ``incref`` can come in between)."""
        with self._lock:
            if object_id not in self._counts:
                fn()

    def decref(self, object_id: bytes) -> None:
        self._pending.append(object_id)

    def drain(self) -> None:
        while self._pending:
            dead = []
            with self._lock:
                counts, pending = self._counts, self._pending
                while pending:
                    oid = pending.popleft()
                    left = counts.get(oid, 0) - 1
                    if left > 0:
                        counts[oid] = left
                    else:
                        counts.pop(oid, None)
                        dead.append(oid)
            if dead:
                self._free(dead)  # may drop refs held inside the freed objects: loop again


_new_id = ids.new_id
_REF_TYPES = {ObjectRef}
_ids_of = operator.attrgetter("_id")
_counter_of = operator.attrgetter("_counter")


def _check_refs(refs, fn: str) -> tuple[list[ObjectRef], bool]:
    if isinstance(refs, ObjectRef):
        return [refs], True
    if isinstance(refs, (list, tuple)):
        if set(map(type, refs)) <= _REF_TYPES:  # the common case, checked without a Python-level loop
            return list(refs), False
        for i, r in enumerate(refs):
            if not isinstance(r, ObjectRef):
                raise TypeError(f"{fn}() expects ObjectRefs, but item {i} is a {type(r).__name__} ({r!r:.60}). "
                                f"Pass the refs returned by .remote() or put().")
        return list(refs), False
    raise TypeError(f"{fn}() expects an ObjectRef or a list of ObjectRefs, got {type(refs).__name__} ({refs!r:.60}).")


def _check_num_returns(num_returns, count: int) -> None:
    if isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1:
        raise ValueError(f"wait(): num_returns must be a positive int, got {num_returns!r}.")
    if num_returns > count:
        raise ValueError(f"wait(): num_returns={num_returns} is more than the {count} refs given; "
                         f"pass num_returns <= len(refs).")


def _without(items: list, picked: list[int]) -> list:
    """``items`` less the positions ``picked`` (sorted), in order (slices: C-level copies)."""
    out, start = [], 0
    for i in picked:
        out += items[start:i]
        start = i + 1
    out += items[start:]
    return out


def _check_timeout(timeout, fn: str) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{fn}(): timeout must be a number of seconds or None, got {timeout!r}.")
    if timeout < 0:
        raise ValueError(f"{fn}(): timeout must be >= 0 seconds or None, got {timeout!r}.")
    return float(timeout)


def _stale_ref_error(ref: ObjectRef, fn: str) -> ValueError:
    return ValueError(
        f"{fn}: {ref!r} belongs to an anyray runtime that was shut down (anyray.shutdown(), or init() again); "
        f"its object went with that runtime. Keep no refs across shutdown(): after init(), run the code that "
        f"made the ref again (in a notebook, rerun the cell that made it).")


def _captured(options: dict, parent) -> dict:
    """``options`` of work submitted with no scheduling strategy from inside a task or actor whose placement
    group captures its children: the same group (Ray's ``placement_group_capture_child_tasks``)."""
    from .util.scheduling_strategies import captured_strategy  # the package imports the API: not at import

    strategy = captured_strategy(parent.placement)
    return options if strategy is None else dict(options, scheduling_strategy=strategy)


def top_level_refs(args: tuple, kwargs: dict) -> list[ObjectRef]:
    deps = [a for a in args if type(a) is ObjectRef]
    if kwargs:
        deps.extend(v for v in kwargs.values() if type(v) is ObjectRef)
    return deps


class Runtime:
    def __init__(self, backend_cls: type[Backend], config: BackendConfig, counters=None):
        """``counters``: factories ``(free) -> ReferenceCounter`` for object refs and actor handles,
        for a process whose references are borrowed from another (a backend's worker); else the
        backend's ``reference_counters()``, else plain counters."""
        self.config = config
        # Filled in before the backend starts, so a backend can hand the job id to its workers.
        self.job_id = config.job_id = config.job_id or ids.new_id()
        self.namespace = config.namespace
        self.events = JobEvents()
        self.backend = backend_cls(config, self.events)
        make_objects, make_handles = counters or self.backend.reference_counters() or \
            (ReferenceCounter, ReferenceCounter)
        self.counter = make_objects(self._free)
        self.handles = make_handles(self._handles_gone)  # live ActorHandles per actor id
        self.driver_id = ids.new_id()
        self.backend.start()
        self.scheduler = scheduler = self.backend.scheduler
        self.store = store = self.backend.object_store
        self._frees_objects = store.frees_objects
        self._watches = callable(getattr(store, "watch", None))  # the store keeps ready indexes (core/waiting.py)
        # The scheduler's optional methods, as its capability flags declare them (read once, here).
        self._run_here = scheduler.run_here if scheduler.runs_here else None
        self._lends_cpus = scheduler.lends_cpus
        self._tracks_handles = scheduler.tracks_handles
        self._places_groups = getattr(scheduler, "places_groups", False)
        self._drainer_stop = threading.Event()
        self._drainer = threading.Thread(target=self._drain_loop, name="anyray-refcount", daemon=True)
        self._drainer.start()

    # -- references -------------------------------------------------------
    def _free(self, object_ids: list[bytes]) -> None:
        if self._frees_objects:  # else the engine frees objects by its own reference counting
            self.store.free(object_ids)

    def _handles_gone(self, actor_ids: list[bytes]) -> None:
        if not self._tracks_handles:  # the engine tracks handles itself
            return
        for actor_id in actor_ids:
            self.scheduler.actor_handles_gone(actor_id)

    def _drain_loop(self) -> None:
        while not self._drainer_stop.wait(0.2):
            try:
                self.counter.drain()
                self.handles.drain()
            except Exception:  # a store shutting down under us; the next loop retries
                pass

    def new_ref(self) -> ObjectRef:
        return ObjectRef(ids.new_id(), None, self.counter)

    # -- objects ----------------------------------------------------------
    def put(self, value: Any) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed: the object is already in the store. "
                            "Pass the ref itself, or put([ref]) to store a list holding it.")
        obj = serialization.serialize(value, what="the value passed to put()")
        self.counter.drain()
        ref = self.new_ref()
        self.store.put(ref, obj)
        return ref

    def check_current(self, refs: Sequence[ObjectRef], fn: str) -> None:
        """Raise if a ref was made by an earlier runtime of this process: nothing would ever resolve it.

        Free until a runtime shuts down with refs still alive (a notebook's): only then can one be stale."""
        if not _refs_outlived_a_runtime:
            return
        counters = set(map(_counter_of, refs))
        if len(counters) == 1 and self.counter in counters:  # the common case, at C speed
            return
        counters.discard(self.counter)
        counters.discard(None)  # a ref rebuilt where no runtime was current: nothing to tell
        if counters:
            raise _stale_ref_error(next(r for r in refs if r._counter in counters), fn)

    def get_serialized(self, refs: Sequence[ObjectRef], timeout: float | None) -> list:
        self.check_current(refs, "get()")  # first: an engine's own store may fail on a stale ref its way
        store = self.store
        if all(store.contains(r) for r in refs):
            return store.get(refs, timeout)
        if timeout is None and self._run_here is not None:  # with a timeout the caller must not take on
            self._run_here(refs)                              # work that may outlast it
        return self._blocking(timeout, store.get, refs, timeout)

    def _blocking(self, timeout, fn, *args):
        """``fn(*args)``, a call that may wait up to ``timeout``: a task waiting in it lends its CPUs to the
        node for that time (a call that does not wait, or a driver's, lends nothing)."""
        if timeout == 0 or not self._lends_cpus or current_task.get() is None:
            return fn(*args)
        self.scheduler.task_blocked()
        try:
            return fn(*args)
        finally:
            self.scheduler.task_unblocked()

    def fetch(self, refs: Sequence[ObjectRef]) -> list:
        """Values of ``refs`` with failures left as ``RemoteFailure`` (for the executor)."""
        return [serialization.deserialize(o) for o in self.get_serialized(refs, None)]

    def get(self, refs, timeout=None):
        try:
            ref_list, single = _check_refs(refs, "get")
        except TypeError:
            if isinstance(refs, ObjectRefGenerator):
                return refs  # as Ray: get() of a generator (not in a list) gives it back
            raise
        timeout = _check_timeout(timeout, "get")
        objs = self.get_serialized(ref_list, timeout)
        values = [serialization.deserialize(o) for o in objs]
        for value in values:
            if type(value) is RemoteFailure:
                raise value.error
        return values[0] if single else values

    def wait(self, refs, num_returns=1, timeout=None, fetch_local=True):
        if type(refs) is waiting.WaitList and refs and self._watches:  # the not_ready list of an earlier call
            timeout = _check_timeout(timeout, "wait")
            _check_num_returns(num_returns, len(refs))
            out = self._blocking(timeout, waiting.take, refs, self.store, num_returns, timeout)
            if out is not None:
                return out
        if isinstance(refs, ObjectRef):
            raise TypeError("wait() expects a list of ObjectRefs, got a single ObjectRef; write wait([ref]).")
        try:
            ref_list, _ = _check_refs(refs, "wait")
        except TypeError:
            if isinstance(refs, (list, tuple)) and any(isinstance(r, ObjectRefGenerator) for r in refs):
                _check_num_returns(num_returns, len(refs))
                return wait_with_generators(self, list(refs), num_returns, _check_timeout(timeout, "wait"))
            raise
        timeout = _check_timeout(timeout, "wait")
        if not ref_list:
            return [], []  # as Ray, whatever num_returns says
        _check_num_returns(num_returns, len(ref_list))
        ids = list(map(_ids_of, ref_list))  # raw ids: C-level loops over them from here on
        if len(set(ids)) != len(ids):
            raise ValueError("wait() got the same ObjectRef more than once; pass each ref once "
                             "(e.g. list(dict.fromkeys(refs))).")
        self.check_current(ref_list, "wait()")
        done = self._blocking(timeout, self.store.wait, ref_list, num_returns, timeout)
        # The first num_returns ready refs in input order, and the rest in input order. In a loop of
        # wait(num_returns=1) calls the first ready ref is near the front, so this scan stops early.
        picked = []
        for i, oid in enumerate(ids):
            if oid in done:
                picked.append(i)
                if len(picked) == num_returns:
                    break
        ready = [ref_list[i] for i in picked]
        not_ready = _without(ref_list, picked)
        if self._watches and not_ready:  # a loop of wait calls on it: each takes from the ready index
            not_ready = waiting.start(self.store, not_ready, _without(ids, picked))
        return ready, not_ready

    def wait_ids(self, refs: list[ObjectRef], timeout: float | None) -> set[bytes]:
        """The ids of ``refs`` sealed now, waiting (up to ``timeout``) until one is; a task waiting lends
        its CPUs as in ``wait``."""
        return self._blocking(timeout, self.store.wait, refs, 1, timeout)

    def free_ids(self, object_ids: list[bytes]) -> None:
        """Free objects no ref of this process names (a generator's items nobody took), with the next drain
        of dropped refs: this runs from a ``__del__``, which the garbage collector may call inside any code,
        the store's own locked sections included."""
        decref = self.counter.decref  # an id nothing counts is freed by the drain as a last ref would be
        for object_id in object_ids:
            decref(object_id)

    def cancel(self, ref, force=False, recursive=True) -> None:
        if isinstance(ref, ObjectRefGenerator):
            ref = ref.completed()  # cancelling a generator cancels its task
        if not isinstance(ref, ObjectRef):
            raise TypeError(f"cancel() expects an ObjectRef returned by .remote(), got {type(ref).__name__}.")
        self.check_current([ref], "cancel()")
        self.scheduler.cancel(ref, force, recursive)

    # -- tasks ------------------------------------------------------------
    def _deps(self, args: tuple, kwargs: dict, name: str) -> list[ObjectRef]:
        deps = top_level_refs(args, kwargs)
        if deps:
            self.check_current(deps, f"{name}.remote()")
        return deps

    def _check_strategy(self, strategy, name: str) -> None:
        """A placement-group or node-affinity strategy needs a scheduler that places by it (``places_groups``)."""
        if strategy is not None and type(strategy) is not str and not self._places_groups:
            raise NotImplementedError(
                f"{name}: the {self.backend.name!r} backend does not place work by {type(strategy).__name__} yet "
                f"(its scheduler does not declare places_groups; 'local', 'multiprocess' and 'ray' do); leave "
                f"scheduling_strategy unset, or use 'DEFAULT' or 'SPREAD'.")

    def submit_task(self, descriptor: FunctionDescriptor, args: tuple, kwargs: dict,
                    options: dict, resources: dict) -> list[ObjectRef]:
        strategy = options["scheduling_strategy"]
        parent = current_task.get()
        if strategy is not None:
            self._check_strategy(strategy, descriptor.name)
        elif parent is not None and parent.placement is not None:
            options = _captured(options, parent)
        options = runtime_env_setup.with_env(self, options, descriptor.name)
        blob = serialization.serialize_arguments(args, kwargs, descriptor.name)
        counter = self.counter
        counter.drain()  # refs dropped since the last call (it returns at once when none were)
        deps = self._deps(args, kwargs, descriptor.name) if args or kwargs else []
        if options.get("runtime_env") is not None:
            deps = runtime_env_setup.with_packages(self, options, deps)
        num_returns = options["num_returns"]
        returns = counter.new_refs(1 if type(num_returns) is str else num_returns)  # a stream has one
        spec = TaskSpec(_new_id(), descriptor, blob, deps, returns, resources, options,
                        parent.task_id if parent is not None else None, options["name"] or descriptor.name)
        stream = self.scheduler.submit_task(spec)  # an engine's own generator, for a stream, or None
        return returns if stream is None else stream

    def create_actor(self, descriptor: FunctionDescriptor, args: tuple, kwargs: dict, options: dict,
                     is_async: bool, method_options: dict):
        self._check_strategy(options["scheduling_strategy"], descriptor.name)
        parent = current_task.get()
        if options["scheduling_strategy"] is None and parent is not None and parent.placement is not None:
            options = _captured(options, parent)
        options = runtime_env_setup.with_env(self, options, descriptor.name)
        namespace = options["namespace"] if options["namespace"] is not None else self.namespace
        name = options["name"]
        if name is not None:
            if not name:
                raise ValueError("Actor name must be a non-empty string; pass name=None for an unnamed actor.")
            existing = self.scheduler.get_named_actor(name, namespace)
            if existing is not None:
                if options["get_if_exists"]:
                    return existing
                raise ValueError(f"An actor named {name!r} already exists in namespace {namespace!r}. "
                                 f"Pick another name, or pass get_if_exists=True to reuse it.")
        blob = serialization.serialize_arguments(args, kwargs, f"{descriptor.name}.__init__")
        spec = ActorSpec(actor_id=ids.new_id(), cls=descriptor, args=blob,
                         deps=runtime_env_setup.with_packages(self, options, self._deps(args, kwargs, descriptor.name)),
                         resources=opts.resource_demand(options),
                         options=options, namespace=namespace, is_async=is_async, method_options=method_options)
        try:
            native = self.scheduler.create_actor(spec)
        except ActorNameTaken as taken:  # get_if_exists lost a race for the name: the winner's actor
            return taken.handle
        return ActorHandle(spec.actor_id, descriptor.name, method_options, native)

    def submit_actor_task(self, handle, method_name: str, args: tuple, kwargs: dict, options: dict):
        name = f"{handle._class_name}.{method_name}"
        blob = serialization.serialize_arguments(args, kwargs, name)
        counter = self.counter
        counter.drain()
        num_returns = options["num_returns"]
        spec = ActorTaskSpec(
            task_id=_new_id(), actor_id=handle._actor_id, method_name=method_name, args=blob,
            deps=self._deps(args, kwargs, name) if args or kwargs else [],
            returns=counter.new_refs(1 if type(num_returns) is str else num_returns),  # a stream has one
            caller_id=handle._caller_id, seq=next(handle._seq), options=options, name=name)
        stream = self.scheduler.submit_actor_task(spec)
        return spec.returns if stream is None else stream

    def get_actor(self, name: str, namespace: str | None):
        if not isinstance(name, str) or not name:
            raise TypeError(f"get_actor() expects an actor name (a non-empty str), got {name!r}.")
        ns = self.namespace if namespace is None else namespace
        handle = self.scheduler.get_named_actor(name, ns)
        if handle is None:
            known = [n for space, n in self.scheduler.list_named_actors(ns)]
            hint = f" Named actors in this namespace: {', '.join(sorted(known))}." if known else ""
            raise ValueError(f"Failed to look up actor with name {name!r} in namespace {ns!r}: no live actor has "
                             f"that name.{hint} Create it with .options(name={name!r}).remote() first.")
        return handle

    def kill(self, handle, no_restart=True) -> None:
        if not isinstance(handle, ActorHandle):
            raise TypeError(f"kill() expects an ActorHandle, got {type(handle).__name__}. "
                            f"To stop a task, use cancel(ref, force=True).")
        self.scheduler.kill_actor(handle._actor_id, no_restart)

    def shutdown(self) -> None:
        global _refs_outlived_a_runtime
        self._drainer_stop.set()
        if self.counter._counts:
            _refs_outlived_a_runtime = True
        try:
            self.backend.shutdown()
        finally:
            self.counter = ReferenceCounter(lambda ids_: None)
            self.handles = ReferenceCounter(lambda ids_: None)


_refs_outlived_a_runtime = False  # set for good once a runtime shut down with refs still alive: see check_current


__all__ = ["Runtime", "ReferenceCounter", "current_runtime", "process_runtime", "set_current", "task_runtime"]
