"""The local Scheduler: tasks on a thread pool, each actor on threads of its own.

Scheduling rules are the same as on every backend: a task starts when its
dependencies are sealed and its resources are free; a task blocked in
``get`` lends its CPUs; calls to an actor start in submission order.
"""

from __future__ import annotations

import collections
import ctypes
import threading

from anyray import serialization
from anyray.backend_kit.actor_host import ActorHost
from anyray.backend_kit.threads import DaemonThreadPool
from anyray.context import TaskContext, current_task
from anyray.exceptions import ActorDiedError, ActorNameTaken, TaskCancelledError, WorkerCrashedError
from anyray.executor import Call, run_in_place, serialize_failure
from anyray.generators import stream_spec
from anyray.policy import Feasibility
from anyray.ports.scheduler import Scheduler
from anyray.specs import RemoteFailure, TaskSpec
from anyray.util.scheduling_strategies import placement_of

from ..common.names import NamedActors
from ..common.placement_groups import GroupPort, PlacementGroups, group_id_of, removed_error, route
from ..common.queues import ShapeQueues, admit
from ..common.resources import NodeResources, ReportsResources, ResourcePool
from . import state
from .environments import EnvActorHost, Environments


class _Task:
    __slots__ = ("spec", "shape", "state", "thread_id", "lease", "queues")

    def __init__(self, spec: TaskSpec, queues):
        self.spec = spec
        self.shape = tuple(sorted(spec.resources.items()))
        self.state = "waiting"   # waiting -> queued -> dispatched (leased) -> running (claimed) -> done
        self.thread_id: int | None = None
        self.lease = None
        self.queues = queues     # the node's shape queues, or those of the placement group bundle it runs in


class _InGroup:
    """The scheduler as an ``ActorHost`` of a placement group sees it: the actor waits in its bundle's queues."""

    def __init__(self, scheduler: LocalScheduler, queues):
        self._scheduler = scheduler
        self._queues = queues

    def __getattr__(self, name):
        return getattr(self._scheduler, name)

    def enqueue(self, demand: dict, start) -> None:
        self._queues.enqueue(demand, start)


class _Starts:
    """Dispatched tasks on their way to the pool's threads, handed over by one pool call at a time.

    A task that its caller runs itself before a thread takes it (``run_here``: a ``get`` right after the
    submit) then costs no thread a wake-up, and a burst of dispatches wakes threads one after another
    rather than once each. Each call takes one task and, if more wait, first hands the rest to another."""

    def __init__(self, lock, claim, call_pool):
        self._lock = lock            # the scheduler's
        self._claim = claim          # under the lock: take a dispatched task for this thread (False if taken)
        self._call_pool = call_pool  # one more pool call, which calls take()
        self._waiting: collections.deque = collections.deque()
        self._called = False         # a pool call is on its way (it takes what waits)

    def add(self, task) -> bool:
        """Under the lock: ``task`` was dispatched; True when the caller must make a pool call for it."""
        self._waiting.append(task)
        if self._called:
            return False
        self._called = True
        return True

    def take(self):
        """In a pool call: the next waiting task still dispatched, claimed for this thread (or None)."""
        task = None
        with self._lock:
            waiting = self._waiting
            while waiting:
                candidate = waiting.popleft()
                if self._claim(candidate):  # else run by the thread that waits for it, or cancelled
                    task = candidate
                    break
            more = bool(waiting)
            self._called = more
        if more:
            self._call_pool()
        return task


def _own_arguments(spec) -> None:
    """Copy the out-of-band argument buffers: they are views of the caller's arrays, which the
    caller may change after ``.remote()`` returns and which the task must not write through."""
    if spec.args.buffers:
        spec.args = spec.args.copy_buffers()


class LocalScheduler(GroupPort, ReportsResources, Scheduler):
    runs_here = tracks_handles = lends_cpus = lists_state = True  # capability flags: see anyray.ports.scheduler

    def __init__(self, store, metadata, events, pool: ResourcePool):
        self.events = events
        self._resources = pool
        self._lock = threading.RLock()
        self._shapes = ShapeQueues(self._lock, pool, self._start)
        self.enqueue, self.release = self._shapes.enqueue, self._shapes.release  # ActorHost waits through these
        self.groups = PlacementGroups(self._lock, pool, self._shapes, store.put,
                                      lambda group, queued: _group_removed(self, group, queued))
        self._refused: dict[bytes, BaseException] = {}  # actors that can never be placed, by id
        self.resource_view = NodeResources(pool)
        self.feasibility = Feasibility(lambda: [pool.total()], self.resource_view.infeasible_text)
        self.names = NamedActors(metadata, self.get_named_actor)
        self._store = store
        self._tasks: dict[bytes, _Task] = {}            # by return object id, until done
        self._children: dict[bytes, list[_Task]] = {}
        self._actors: dict[bytes, ActorHost] = {}
        self._threads = DaemonThreadPool("anyray-task")
        self._starts = _Starts(self._lock, self._claim, lambda: self._threads.submit(self._run))
        self.envs = Environments(self.fetch)  # each task and actor call runs in its runtime_env's turn
        self._closed = False

    # -- shared helpers -----------------------------------------------------
    def fetch(self, refs):
        """Deserialized values of sealed (or soon sealed) refs; failures stay values."""
        return [serialization.deserialize(o) for o in self._store.get(refs, None)]

    def store_results(self, refs, outputs) -> None:
        for ref, obj in zip(refs, outputs):
            self._store.put(ref, obj)

    def fail(self, refs, error: BaseException) -> None:
        self.store_results(refs, [serialize_failure(RemoteFailure(error))] * len(refs))

    def call_done(self, spec, outputs) -> None:
        self.store_results(spec.returns, outputs)

    def call_failed(self, spec, error: BaseException) -> None:
        self.fail(spec.returns, error)

    def _take_next(self, done: _Task, lease):
        """Hand a finished task's lease to the next queued task of the same demand (and queues), in this
        thread; release it instead when other work waits (fairness) or nothing does."""
        with self._lock:
            task = done.queues.next_queued(done.shape, lease)
            if task is not None:
                task.state = "running"
                task.thread_id = threading.get_ident()
                task.lease = lease
                return task
        self.release(lease)
        return None

    # -- tasks --------------------------------------------------------------
    def submit_task(self, spec: TaskSpec) -> None:
        _own_arguments(spec)
        strategy = spec.options["scheduling_strategy"]
        queues, error = (None, None) if strategy is None else route(self.groups, strategy)
        if error is not None:
            self.fail(spec.returns, error)
            return
        shapes = self._shapes
        task = _Task(spec, queues or shapes)
        if queues is None and task.shape not in self.feasibility.known_to_fit:
            self.feasibility.check(spec.function.function_id, spec.name, spec.resources, task.shape)
        if queues is None and not spec.deps and spec.parent_task_id is None:
            _queue_at_once(self, task)
        elif admit(task, self._tasks, self._children, self._lock, self._store, self.ready):
            self.ready(task)

    def ready(self, task: _Task) -> None:
        with self._lock:
            if task.state != "waiting":
                return  # cancelled while waiting for its dependencies
            queues = task.queues
            if queues is not self._shapes and queues.group.state == "REMOVED":
                task.state = "done"
                removed = queues.group.id
            else:
                removed = None
                task.state = "queued"
                # Behind queued work of its shape on the node's queues: that work's head does not fit, and
                # every release dispatches again, so this task cannot start now (a burst of submissions
                # then costs no dispatch each).
                behind = queues is self._shapes and bool(queues.queues.get(task.shape))
                queues.push(task.shape, task)
        if removed is not None:
            self._forget(task)
            self.fail(task.spec.returns, removed_error(removed))
            return
        if not behind:
            self._shapes.dispatch()

    def _forget(self, task: _Task) -> None:
        with self._lock:
            for ref in task.spec.returns:
                self._tasks.pop(ref._id, None)

    def _start(self, task: _Task, lease) -> None:
        with self._lock:
            queued = task.state == "queued"
            if queued:
                task.state = "dispatched"
                task.lease = lease
                wake = self._starts.add(task)
        if not queued:  # cancelled while queued: its lease goes to the work queued behind it
            self.release(lease)
            return
        if wake:
            self._threads.submit(self._run)

    def _claim(self, task: _Task) -> bool:
        """Under the lock: the calling thread takes a dispatched task (False if another thread did)."""
        if task.state != "dispatched":
            return False
        task.state = "running"
        task.thread_id = threading.get_ident()
        return True

    def _run(self) -> None:
        """A pool thread's call: the next dispatched task on its way to the pool, then the tasks its lease
        takes on (reusing the lease saves a release, an acquire and a thread hand-off)."""
        task = self._starts.take()
        while task is not None:
            lease = task.lease
            self._execute(task)
            task = self._take_next(task, lease)

    def run_here(self, refs) -> None:
        """Run dispatched producers of ``refs`` in the thread about to wait for them: the thread would
        sit idle, and a waiting caller that runs the task saves two thread hand-offs."""
        for ref in refs:
            task = self._tasks.get(ref._id)
            if task is None or task.state != "dispatched":
                continue
            with self._lock:
                claimed = self._claim(task)
            if claimed:
                try:
                    self._execute(task, inline=True)
                finally:
                    self.release(task.lease)

    def _execute(self, task: _Task, inline: bool = False) -> None:
        """Run a claimed task in this thread, store its results and settle its bookkeeping.

        A Ctrl-C that interrupts a task run ``inline`` by the caller waiting for it cancels the
        task and then reaches the caller, as it would have while the caller waited."""
        spec = task.spec
        options = spec.options
        call = _call_of(task, inline, self.events)
        env = options.get("runtime_env")
        envs = self.envs
        interrupted = None
        try:
            if env is None and envs.hold_job(call):  # the common case: no environment to switch to
                try:
                    outputs = run_in_place(call, spec.args, spec.deps, self.fetch, options["max_retries"])
                finally:
                    envs.let_go_job()
            else:
                outputs = run_in_place(envs.wrap(call, env), spec.args, spec.deps, self.fetch, options["max_retries"])
            with self._lock:  # from here on no cancel interrupts this thread; a pending one lands here
                task.thread_id = None
        except BaseException as exc:  # noqa: BLE001 - a cancel can land outside the user's code
            with self._lock:
                task.thread_id = None
            if isinstance(exc, KeyboardInterrupt):
                interrupted = exc
            outputs = [serialize_failure(RemoteFailure(
                exc if isinstance(exc, TaskCancelledError) else TaskCancelledError(str(exc))))] * len(spec.returns)
        _finished(self, task)
        put = self._store.put
        for ref, obj in zip(spec.returns, outputs):
            put(ref, obj)
        if interrupted is not None:
            raise interrupted

    def cancel(self, ref, force: bool, recursive: bool) -> None:
        with self._lock:
            task = self._tasks.get(ref._id)
        if task is None:
            for actor in list(self._actors.values()):
                if actor.cancel(ref):
                    return
            return  # finished or unknown: nothing to do, as in Ray
        self._cancel_task(task, force, recursive)

    def _cancel_task(self, task: _Task, force: bool, recursive: bool, error: BaseException | None = None) -> None:
        error = error or TaskCancelledError(f"Task {task.spec.name} was cancelled.")
        lease = None
        with self._lock:
            state = task.state
            if state in ("waiting", "queued", "dispatched"):
                task.state = "done"
                lease = task.lease if state == "dispatched" else None
                for r in task.spec.returns:
                    self._tasks.pop(r._id, None)
            elif state == "running" and task.thread_id is not None:
                # Raise in the task's thread at its next bytecode (C calls such as sleep finish
                # first). Once only: the thread clears thread_id, under this lock, when done.
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(task.thread_id),
                                                           ctypes.py_object(TaskCancelledError))
                task.thread_id = None
            children = list(self._children.get(task.spec.task_id, ())) if recursive else []
        if state in ("waiting", "queued", "dispatched"):
            self.fail(task.spec.returns, error)
            if lease is not None:
                self.release(lease)
        elif state == "running" and force:  # a thread cannot be killed: settle the refs now
            self.fail(task.spec.returns, error)
        for child in children:
            self._cancel_task(child, force, recursive)

    # -- resources while blocked ------------------------------------------------
    def task_blocked(self) -> None:
        self.envs.blocked()
        ctx = current_task.get()
        if ctx is None or ctx.lease is None or ctx.blocked:
            return
        ctx.blocked = True
        self._resources.lend_cpus(ctx.lease)
        self._shapes.dispatch()

    def task_unblocked(self) -> None:
        self.envs.unblocked()
        ctx = current_task.get()
        if ctx is None or not ctx.blocked:
            return
        ctx.blocked = False
        self._resources.reclaim_cpus(ctx.lease)

    # -- actors -------------------------------------------------------------
    def create_actor(self, spec):
        queues, error = route(self.groups, spec.options.get("scheduling_strategy"), actor=True)
        if error is not None:
            self._refused[spec.actor_id] = error  # its calls fail with the error
            return
        winner = self.names.claim(spec)
        if winner is not None:
            raise ActorNameTaken(winner)  # get_if_exists, and another caller created it first
        if spec.resources and queues is None:
            self.feasibility.check(spec.actor_id, spec.cls.name, spec.resources)
        _own_arguments(spec)
        actor = EnvActorHost(spec, self if queues is None else _InGroup(self, queues))
        with self._lock:
            self._actors[spec.actor_id] = actor
        actor.start()

    def actor_died(self, actor: ActorHost) -> None:
        self.names.release(actor.spec)

    def actor_crashed(self, actor: ActorHost, spec, reason: str) -> None:
        actor.crash(spec, reason)  # no process to end here: the actor restarts in place

    def submit_actor_task(self, spec) -> None:
        actor = self._actors.get(spec.actor_id)
        if actor is None:
            refused = self._refused.get(spec.actor_id)
            self.fail(spec.returns, refused or ActorDiedError(f"No actor with id {spec.actor_id.hex()} exists in "
                                                              f"this job."))
            return
        _own_arguments(spec)
        actor.submit(spec)

    def get_named_actor(self, name: str, namespace: str):
        actor_id = self.names.actor_id(name, namespace)
        actor = self._actors.get(actor_id) if actor_id is not None else None
        return actor.handle() if actor is not None and actor.alive_or_pending else None

    def actor_handles_gone(self, actor_id: bytes) -> None:
        actor = self._actors.get(actor_id)
        if actor is not None and actor.spec.options["lifetime"] != "detached":
            actor.terminate_after_pending()

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        actor = self._actors.get(actor_id)
        if actor is not None:
            actor.kill(no_restart)

    def list_named_actors(self, namespace):
        return self.names.list(namespace)

    def list_state(self, kind: str) -> list[dict]:
        return state.list_state(kind, self.resource_view.pool.node_id, self._actors, self._tasks, self._store)

    def shutdown(self) -> None:
        self._closed = True
        for actor in list(self._actors.values()):
            actor.kill(True, reason="the backend shut down")
        self._threads.shutdown()
        self.envs.close()


def _queue_at_once(scheduler: LocalScheduler, task: _Task) -> None:
    """``admit`` and ``ready`` in one step, for the common task: no dependencies, no parent, the node's queues."""
    shapes = scheduler._shapes
    with scheduler._lock:
        tasks = scheduler._tasks
        for ref in task.spec.returns:
            tasks[ref._id] = task
        task.state = "queued"
        behind = bool(shapes.queues.get(task.shape))  # see ready(): queued work of its shape dispatches first
        shapes.push(task.shape, task)
    if not behind:
        shapes.dispatch()


def _call_of(task: _Task, inline: bool, events) -> Call:
    """The executor's call of a claimed task: its context holds the task's lease and placement group."""
    spec = task.spec
    options = spec.options
    strategy = options["scheduling_strategy"]
    ctx = TaskContext(spec.task_id, None, spec.name, dict(spec.resources), task.lease.gpu_ids, lease=task.lease,
                      inline=inline, placement=None if strategy is None else placement_of(strategy))
    returns = spec.returns
    return Call(spec.function.target, spec.name, "task", ctx, len(returns), events,
                options["retry_exceptions"], options["max_retries"],
                stream_spec(options, returns[0]._id) if type(options["num_returns"]) is str else None)


def _finished(scheduler: LocalScheduler, task: _Task) -> None:
    """``task`` ran: the scheduler forgets it (by its return ids, and as its parent's child)."""
    spec = task.spec
    with scheduler._lock:
        task.state = "done"
        tasks = scheduler._tasks
        for ref in spec.returns:
            tasks.pop(ref._id, None)
        children = scheduler._children
        if children:
            siblings = children.get(spec.parent_task_id) if spec.parent_task_id else None
            if siblings is not None:
                siblings.remove(task)
                if not siblings:
                    del children[spec.parent_task_id]
            children.pop(spec.task_id, None)


def _group_removed(scheduler: LocalScheduler, group, queued: list) -> None:
    """``group`` was removed: its queued tasks fail, its actors die (their running calls fail), its running
    tasks are settled with WorkerCrashedError (a thread cannot be killed: it is interrupted at its next
    bytecode, its results dropped)."""
    error = removed_error(group.id)
    for task in queued:
        if isinstance(task, _Task) and task.state == "queued":
            task.state = "done"
            scheduler._forget(task)
            scheduler.fail(task.spec.returns, error)
    cause = "Destroying worker since its placement group was removed"
    for host in list(scheduler._actors.values()):
        if group_id_of(host.spec.options.get("scheduling_strategy")) == group.id:
            running = [spec for spec, _ in list(host._running_sync.values())]
            host.kill(True, reason=cause)
            for spec in running:
                scheduler.call_failed(spec, ActorDiedError(f"The actor {host.spec.cls.name} is dead: {cause}."))
    with scheduler._lock:
        running = [t for t in scheduler._tasks.values()
                   if getattr(t.queues, "group", None) is group and t.state in ("dispatched", "running")]
    for task in dict.fromkeys(running):
        scheduler._cancel_task(task, True, False, WorkerCrashedError(
            f"The task {task.spec.name} was stopped: its placement group {group.id.hex()} was removed."))
