"""The node's tasks: each waits for its dependencies, then in the FIFO of its demand shape until its
resources are free, then runs on an idle worker (or a new one, forked in a few milliseconds). A worker
runs one task at a time; when it finishes, the next task of the same shape goes to the same worker on
the same lease, and with nothing queued the worker is idle before its result is sealed, so a task that
result makes ready runs on it. A worker that dies mid-task has its task retried up to ``max_retries`` times."""

from __future__ import annotations

import os
import signal
from time import monotonic

from anyray.exceptions import AnyrayError, TaskCancelledError, WorkerCrashedError
from anyray.generators import stream_of
from anyray.policy import allows_another
from anyray.runtime_env_setup import KEY as ENV_KEY
from anyray.serialization import portable_classes
from anyray.specs import TaskSpec
from anyray.util.scheduling_strategies import placement_of

from ..common.placement_groups import removed_error, route
from ..common.queues import ShapeQueues, admit
from . import gc_guard, memory_monitor
from . import messages as m
from .interning import shape_of
from .pool import describe
from .store import ArenaObject, to_wire


def forget(task, tasks: dict, children: dict, store) -> None:
    """``Tasks.finish``: ``task`` is settled; out of ``tasks`` and ``children``, its held arguments dropped."""
    spec = task.spec
    task.state = "done"
    for ref in spec.returns:
        tasks.pop(ref._id, None)
    if len(tasks) < gc_guard.LOW and gc_guard.deferring():  # and the results they left are few
        gc_guard.queue_shrank(max(len(tasks), store.count()))
    siblings = children.get(spec.parent_task_id) if spec.parent_task_id else None
    if siblings is not None:
        if task in siblings:
            siblings.remove(task)
        if not siblings:
            del children[spec.parent_task_id]
    children.pop(spec.task_id, None)
    if task.held is not None:
        held, task.held = task.held, None
        store.drop(held)


class Task:
    __slots__ = ("spec", "shape", "state", "lease", "worker", "attempts", "held", "cancelled", "job", "node",
                 "spilled", "queues", "submitted")

    def __init__(self, spec: TaskSpec, held: ArenaObject | None, job: tuple):
        self.spec = spec
        self.job = job  # (job id, namespace) of the driver it comes from
        self.shape = shape_of(spec.resources)
        self.state = "waiting"  # waiting -> queued -> running -> done
        self.lease = None
        self.worker = None
        self.attempts = 0
        self.held = held  # the arguments, when large enough for shared memory
        self.cancelled = False
        self.node = None      # the other node it was handed to (cluster)
        self.spilled = False  # handed here by another node: it runs here
        self.queues = None    # the queues of the placement group bundle it runs in; None: the node's
        self.submitted = monotonic()  # for the node's scheduling latency (submit to start, on /metrics)


def same_env(worker, task: Task) -> bool:
    """Whether ``worker`` was started for ``task``'s runtime_env (workers are pooled per environment)."""
    runtime_env = task.spec.options.get("runtime_env")
    return worker.env_key == (runtime_env[ENV_KEY] if runtime_env else "")


def _unless_closed(supervision, dispatch) -> None:
    """``dispatch()`` from a thread of its own (a memory-kill backoff's): if the node closed meanwhile, its worker
    pool's refusal to start a worker ends the thread quietly."""
    try:
        dispatch()
    except AnyrayError:
        if not supervision.closed:
            raise


class Tasks:
    """``lock``: the node's lock; ``pool``: its resources; ``queues``: the shape queues (whose ``start``
    is ``start`` here); ``seams``: placement, objects elsewhere, feasibility."""

    def __init__(self, lock, store, pool, queues: ShapeQueues, ledger, functions, supervision, seams, job: tuple):
        self._lock = lock
        self._store = store
        self._pool = pool
        self._seams = seams
        self._job = job
        self._queues = queues.queues
        self._shapes = queues
        self._push, self._dispatch, self.release = queues.push, queues.dispatch, queues.release
        self.fail, self._own, self._wire, self._seal_wires = ledger.fail, ledger.own, ledger.wire, ledger.seal_wires
        self._blob = functions.blob
        self._idle, self._worker_for = supervision.idle, supervision.worker_for
        self._send, self._exit, self._supervision = supervision.send, supervision.exit, supervision
        self.call_worker_of = None  # oid -> the worker running the actor call that returns it (set by the node)
        self.latency = None  # observe(seconds from submission to start), under the lock (node metrics)
        self.tasks: dict[bytes, Task] = {}          # by return object id, until done
        self.children: dict[bytes, list[Task]] = {}  # parent task id -> the tasks it submitted here

    def submit(self, spec: TaskSpec, held: ArenaObject | None = None, job: tuple | None = None,
               handed: bool = False, attempts: int = 0) -> None:
        """``handed``: another node of a cluster handed the task here, to run here; ``attempts``: the runs
        after the first it already had (a task run again to rebuild a lost result)."""
        seams = self._seams
        if seams.objects is not None and spec.deps:
            seams.objects.prefetch_deps(spec.deps)
        if held is None:
            spec.args, held = self._own(spec.args)
        task = Task(spec, held, job or self._job)
        task.attempts = attempts
        if handed:
            task.spilled = True
        task.queues, error = route(seams.groups, spec.options.get("scheduling_strategy"))
        if error is not None:
            self.refuse(task, error)
            return
        feasibility = seams.feasibility
        if task.queues is None and task.shape not in feasibility.known_to_fit:
            feasibility.check(spec.function.function_id, spec.name, spec.resources, task.shape)
        if len(self.tasks) >= gc_guard.HIGH:
            gc_guard.queue_grew(len(self.tasks))
        if admit(task, self.tasks, self.children, self._lock, self._store, self.ready):
            self.ready(task)

    def ready(self, task: Task) -> None:
        """``task``'s dependencies are sealed: run it here, or where the placement seam sends it."""
        placement = self._seams.placement
        if placement is not None and placement.route(task):
            return
        self.ready_here(task)

    def refuse(self, task: Task, error: BaseException) -> None:
        """``task`` can never run (its placement group is gone, its node is not this one): it fails."""
        if task.held is not None:
            held, task.held = task.held, None
            self._store.drop(held)
        self.fail(task.spec.returns, error)

    def ready_here(self, task: Task) -> None:
        if task.queues is not None:
            self._ready_in_group(task)
            return
        with self._lock:
            if task.state != "waiting":
                return  # cancelled while it waited for its dependencies
            task.state = "queued"
            if not self._queues.get(task.shape):  # nothing of its shape waits: take its resources now
                lease = self._pool.acquire(task.spec.resources)
                if lease is not None:
                    self.start(task, lease)
                    return
            self._push(task.shape, task)
        self._dispatch()

    def _ready_in_group(self, task: Task) -> None:
        with self._lock:
            if task.state != "waiting":
                return
            group = task.queues.group
            removed = group.state == "REMOVED"
            if removed:
                self.finish(task)
            else:
                task.state = "queued"
                task.queues.push(task.shape, task)
        if removed:
            self.fail(task.spec.returns, removed_error(group.id))
            return
        self._dispatch()

    def start(self, task: Task, lease) -> None:
        """Run a queued ``task`` on ``lease``, just acquired for it."""
        with self._lock:
            if task.state != "queued":
                worker = None
            else:
                task.lease = lease
                worker = self._worker_for(task.spec.options, lambda built: self._env_built(task, lease, built))
                if worker is None:
                    return  # its Python environment is being built: _env_built goes on, holding the lease
                task.state = "running"
                worker.task = task
                task.worker = worker
                if self.latency is not None:
                    self.latency.observe(monotonic() - task.submitted)
        if worker is None:
            self.release(lease)
            return
        self._send_task(worker, task)

    def _env_built(self, task: Task, lease, built) -> None:
        """The Python environment ``task`` waited for on ``lease`` is built (an interpreter), or failed."""
        if isinstance(built, BaseException):
            with self._lock:
                live = task.state == "queued"
                if live:
                    self.finish(task)
            if live:
                self.fail(task.spec.returns, built)
            self.release(lease)
            return
        self.start(task, lease)  # finds the environment built now (or the task cancelled: the lease goes back)

    def _send_task(self, worker, task: Task) -> None:
        spec = task.spec
        fn = spec.function
        fn_id = fn.function_id
        blob = None
        if fn_id not in worker.functions:
            blob = self._blob(fn)
            worker.functions.add(fn_id)
        store = self._store
        deps = {oid: self._wire(worker, oid, store.entry(oid)) for oid in dict.fromkeys(r._id for r in spec.deps)}
        args = self._wire(worker, spec.task_id, task.held) if task.held is not None else to_wire(spec.args)
        options = spec.options
        job = None
        if task.job is not worker.job and task.job != worker.job:  # sent only when it changes
            job = worker.job = task.job
        self._send(worker, m.TASK, m.Task.pack(
            spec.task_id, fn_id, blob, args, [r._id for r in spec.deps], deps, [r._id for r in spec.returns],
            spec.name, spec.resources, task.lease.gpu_ids, portable_classes(options["retry_exceptions"]),
            options["max_retries"], job, placement_of(options.get("scheduling_strategy")),
            stream_of(options) if type(options.get("num_returns")) is str else None))

    def task_result(self, worker, task_id: bytes, wires, contained) -> None:
        task = worker.task
        if type(task) is not Task and task is not None:  # a worker lent to a driver (cluster/lease_host.py):
            return  # its results go to the driver; this is the records of its tasks
        if task is not None and task_id is None:  # the worker could not read the task: one failure for all
            task_id = task.spec.task_id
            wires, contained = wires * len(task.spec.returns), contained * len(task.spec.returns)
        if task is None or task.spec.task_id != task_id:
            return
        spec = task.spec
        lease = task.lease
        max_calls = spec.options.get("max_calls") or 0
        queues = task.queues or self._shapes
        with self._lock:
            # Nothing queued: the worker goes idle before its result is sealed, so a task that result makes
            # ready runs on it (awake, reading), not on a sleeping worker: a chain stays on one worker.
            early = not max_calls and not worker.retiring and not any(queues.queues.values())
            if early:
                worker.task = None
                task.state = "done"  # a cancel from now on finds nothing to interrupt
                self._idle.append(worker)
        self._seal_wires(worker, [r._id for r in spec.returns], wires, contained)
        if early:
            with self._lock:
                self.finish(task)
            self.release(lease)
            return
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
                nxt = queues.next_queued(task.shape, lease)
                if nxt is not None:
                    if same_env(worker, nxt):
                        runner = worker
                    else:
                        self._idle.append(worker)
                        nxt.lease = lease
                        runner = self._worker_for(nxt.spec.options,
                                                  lambda built, nxt=nxt: self._env_built(nxt, lease, built))
                    if runner is not None:
                        nxt.state, nxt.lease, nxt.worker = "running", lease, runner
                        runner.task = nxt
                        if self.latency is not None:
                            self.latency.observe(monotonic() - nxt.submitted)
                else:
                    self._idle.append(worker)
        if nxt is not None:
            if nxt.worker is not None:
                self._send_task(nxt.worker, nxt)
            return  # else the lease waits with nxt for its Python environment
        if worker.retiring:
            self._exit(worker)
        self.release(lease)

    def finish(self, task: Task) -> None:
        """Under the lock (re-entrant): the task is settled; forget it and drop its held arguments."""
        forget(task, self.tasks, self.children, self._store)

    def worker_lost(self, task: Task, handle) -> None:
        """The worker running ``task`` died: run it again while ``max_retries`` allows, else it failed."""
        if type(task) is not Task:  # a worker lent to a driver: its resources go back, the driver retries
            task.lost(handle)
            return
        if task.cancelled:
            with self._lock:
                self.finish(task)
        self._pool.release(task.lease)
        spec = task.spec
        retry = False
        oom = memory_monitor.killed_for_memory(handle)  # killed by the node's memory monitor: its own retries
        with self._lock:
            if task.state == "running" and not task.cancelled:
                retries = spec.options["max_retries"]
                if memory_monitor.may_retry(spec) if oom else allows_another(retries, task.attempts):
                    task.attempts += 1
                    task.state = "queued"
                    task.lease = task.worker = None
                    if oom:  # queued again after Ray's backoff for memory kills
                        memory_monitor.after_backoff(spec, lambda: self._back_from_backoff(task))
                    else:
                        (task.queues or self._shapes).push_front(task.shape, task)
                    retry = True
        if not retry and task.state == "running" and not task.cancelled:
            self.finish(task)
            self.fail(spec.returns, memory_monitor.error(oom) if oom else WorkerCrashedError(
                f"The worker running {spec.name} (pid {handle.pid}) died: {describe(handle.exit.returncode)}"
                f"{'' if not task.attempts else f', on each of {task.attempts + 1} attempts'}. "
                f"Raise max_retries to retry it more often."))
        self._dispatch()

    def _back_from_backoff(self, task: Task) -> None:
        """A task killed for memory waited out its backoff: queue it again, unless it ended or the node closed."""
        with self._lock:
            if task.state != "queued" or task.cancelled or self._supervision.closed:
                return
            (task.queues or self._shapes).push_front(task.shape, task)
        _unless_closed(self._supervision, self._dispatch)

    def cancel(self, ref, force: bool, recursive: bool) -> bool:
        """Cancel the task that returns ``ref``; False if no task here does."""
        with self._lock:
            task = self.tasks.get(ref._id)
        if task is None:
            return False
        self.cancel_task(task, force, recursive)
        return True

    def cancel_task(self, task: Task, force: bool, recursive: bool) -> None:
        error = TaskCancelledError(f"Task {task.spec.name} was cancelled.")
        with self._lock:
            state, worker = task.state, task.worker
            if state in ("waiting", "queued"):
                self.finish(task)
            elif state == "running" and force:
                task.cancelled = True
                worker.retiring = True
            children = list(self.children.get(task.spec.task_id, ())) if recursive else []
        if state in ("waiting", "queued"):
            self.fail(task.spec.returns, error)
        elif state == "running":
            if force:
                self.fail(task.spec.returns, error)
                worker.handle.kill()
            elif self._send(worker, m.CANCEL, task.spec.task_id) and worker.handle.pid and worker.handle.alive:
                try:  # the message says which task; the signal interrupts it even in user code or sleep()
                    os.kill(worker.handle.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        for child in children:
            self.cancel_task(child, force, recursive)

    def task_of(self, oid: bytes) -> Task | None:
        """The task (not yet done) that returns ``oid``."""
        with self._lock:
            return self.tasks.get(oid)

    def has_task(self, oid: bytes) -> bool:
        return oid in self.tasks

    def worker_of(self, oid: bytes):
        """The worker making ``oid``: the one running the task (or else the actor call) that returns it."""
        task = self.tasks.get(oid)
        if task is not None:
            return task.worker
        return self.call_worker_of(oid)
