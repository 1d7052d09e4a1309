"""One actor instance hosted on threads of the current process: its call queue and its threads.

The local backend hosts every actor this way in the driver; the multiprocess
backend hosts each actor this way inside its own worker process. The host
object it is given (``host``) provides: ``enqueue(demand, start)`` and
``release(lease)`` for its resources, ``fetch(refs)`` for argument values,
``call_done(spec, outputs)`` and ``call_failed(spec, error)`` for a call's results,
``events`` for the timeline, ``actor_died(actor)`` once it is dead, and
``actor_crashed(actor, spec, cause)`` when a call ends the actor's process with
``sys.exit`` and an exit code other than 0 (a crash: the host restarts the actor
while ``max_restarts`` allows). An exit with code 0 (``exit_actor()``) ends the
actor here, with no restart.

A sync actor with ``max_concurrency`` 1 runs calls one by one on its own
thread; a threaded actor hands them, in order, to a pool of that size; an
async actor runs them as tasks of its own event loop, at most
``max_concurrency`` at once. Each starts calls in submission order.

Concurrency groups (the actor's ``concurrency_groups`` option, {name: size}):
a call runs in the group its options name (``concurrency_group``, from
``@method`` or the call's ``.options``), else in the default group, whose size
is ``max_concurrency``. Each group runs at most its size of calls at once,
whatever the other groups run: a threaded actor has a thread pool per group,
an async one a semaphore per group on its one event loop.
"""

from __future__ import annotations

import collections
import threading

from anyray.actor import ActorHandle, exit_is_intended
from anyray.context import TaskContext
from anyray.exceptions import ActorDiedError, TaskCancelledError
from anyray.executor import Call
from anyray.generators import stream_spec
from anyray.policy import allows_another, call_retry_limit
from anyray.specs import RemoteFailure
from anyray.util.scheduling_strategies import placement_of

from .threads import DaemonThreadPool

_TERMINATE = object()  # queue marker: end the actor once the calls queued before it have started


class ActorHost:
    def __init__(self, spec, scheduler):
        self.spec = spec
        self._info = spec.info()
        self._running_sync: dict[bytes, tuple] = {}  # task id -> (spec, context) of sync calls running
        self._sched = scheduler
        self._cond = threading.Condition()
        self._queue: collections.deque = collections.deque()
        self.state = "pending"   # pending -> alive -> dead; restarting in between
        self.cause = ""
        self.restarts = 0
        self.instance = None
        self.lease = None
        self._loop = None        # the event loop of an async actor
        self._semaphore = None   # bounds its concurrent calls
        self._pool: DaemonThreadPool | None = None
        self._groups: dict[str, int] = dict(spec.options.get("concurrency_groups") or {})
        self._group_pools: dict[str, DaemonThreadPool] = {}   # a threaded actor's, by group
        self._group_semaphores: dict = {}                     # an async actor's, by group
        self._in_pools = 0          # calls handed to a thread pool that have not returned yet
        self._terminating = False   # its last handle is gone: it ends when _in_pools reaches 0
        self._running_async: dict[bytes, tuple] = {}  # task id -> (spec, asyncio.Task)

    @property
    def alive_or_pending(self) -> bool:
        return self.state != "dead"

    def handle(self) -> ActorHandle:
        return ActorHandle(self.spec.actor_id, self.spec.cls.name, self.spec.method_options)

    def start(self) -> None:
        self._sched.enqueue(self.spec.resources, self._on_lease)

    def _on_lease(self, lease) -> None:
        if self.state == "dead":  # killed while waiting for resources
            self._sched.release(lease)
            return
        self.lease = lease
        threading.Thread(target=self._main, name=f"anyray-actor-{self.spec.cls.name}", daemon=True).start()

    # -- construction -------------------------------------------------------
    def _context(self, task_id, name: str) -> TaskContext:
        return TaskContext(task_id=task_id, actor_id=self.spec.actor_id, name=name, actor=self._info,
                           resources=dict(self.spec.resources),
                           gpu_ids=self.lease.gpu_ids if self.lease else [], restarted=self.restarts > 0,
                           placement=placement_of(self.spec.options.get("scheduling_strategy")))

    def _construct(self) -> bool:
        spec = self.spec
        call = Call(spec.cls.target, spec.cls.name, "actor_creation", self._context(spec.actor_id, spec.cls.name),
                    1, self._sched.events)
        try:
            result = call.invoke(spec.args, spec.deps, self._sched.fetch)
        except SystemExit as exc:
            result = RemoteFailure(RuntimeError(f"it called sys.exit({exc.code!r})"))
        if type(result) is RemoteFailure:
            self._die(f"The actor {spec.cls.name} died because its constructor raised:\n{result.error}")
            return False
        with self._cond:
            if self.state == "dead":
                return False
            self.instance = result[0]
            self.state = "alive"
            self._cond.notify_all()
        return True

    def _main(self) -> None:
        if self.spec.is_async:
            import asyncio  # only async actors pay for it

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            self._semaphore = asyncio.Semaphore(self.spec.max_concurrency)
            self._group_semaphores = {g: asyncio.Semaphore(n) for g, n in self._groups.items()}
        elif self.spec.max_concurrency > 1 or self._groups:
            self._pool = DaemonThreadPool(f"anyray-actor-{self.spec.cls.name}", self.spec.max_concurrency)
            self._group_pools = {g: DaemonThreadPool(f"anyray-actor-{self.spec.cls.name}-{g}", n)
                                 for g, n in self._groups.items()}
        if not self._construct():
            return
        if self._loop is not None:
            self._loop.call_soon(self._pump_async)
            self._loop.run_forever()
            self._loop.close()
            return
        while True:
            with self._cond:
                while not self._queue and self.state not in ("dead", "restarting"):
                    self._cond.wait()
                if self.state == "dead":
                    return
                restarting = self.state == "restarting"
                spec = None if restarting else self._queue.popleft()
            if restarting:
                if not self._construct():
                    return
                continue
            if spec is _TERMINATE:
                with self._cond:  # FIFO: every earlier call is in a pool by then; the last to return ends it
                    self._terminating = True
                    idle = self._in_pools == 0
                if idle:
                    self._die(self._gone_cause())
                return
            if self._pool is not None:
                with self._cond:
                    self._in_pools += 1
                self._group_pools.get(spec.options.get("concurrency_group"), self._pool).submit(self._run_pooled, spec)
            else:
                self._run_call(spec)

    def _run_pooled(self, spec) -> None:
        """Run a call on a pool's thread; once the last handle is gone, the last call to return ends the actor."""
        try:
            self._run_call(spec)
        finally:
            with self._cond:
                self._in_pools -= 1
                last = self._terminating and self._in_pools == 0
            if last:
                self._die(self._gone_cause())

    # -- calls --------------------------------------------------------------
    def submit(self, spec) -> None:
        with self._cond:
            if self.state == "dead":
                dead = True
            else:
                dead = False
                self._queue.append(spec)
                self._cond.notify_all()
        if dead:
            self._sched.call_failed(spec, ActorDiedError(self.cause))
        elif self._loop is not None and self.state == "alive":
            self._loop.call_soon_threadsafe(self._pump_async)

    def _call_of(self, spec) -> Call:
        method = getattr(self.instance, spec.method_name)
        return Call(method, spec.name, "actor_task", self._context(spec.task_id, spec.name),
                    len(spec.returns), self._sched.events, spec.options.get("retry_exceptions") or False,
                    call_retry_limit(spec.options, self.spec.options),
                    stream_spec(spec.options, spec.returns[0]._id) if spec.returns else None)

    def _run_call(self, spec) -> None:
        if self.state == "dead":
            self._sched.call_failed(spec, ActorDiedError(self.cause))
            return
        call = self._call_of(spec)
        self._running_sync[spec.task_id] = (spec, call.ctx)  # for cancel(): it flags the call
        try:
            outputs = call.run(spec.args, spec.deps, self._sched.fetch)
        except SystemExit as exc:
            self.exited(spec, exc)
            return
        finally:
            self._running_sync.pop(spec.task_id, None)
        self._sched.call_done(spec, outputs)

    def exited(self, spec, exc: SystemExit) -> None:
        """A call raised ``SystemExit``: end the actor on purpose (code 0), else as a crash."""
        if exit_is_intended(exc):
            cause = (f"The actor {self.spec.cls.name} exited on purpose: {spec.name} called exit_actor() "
                     f"or sys.exit(0); it is not restarted.")
            # Dead first, then the call's answer: a caller that sees it and calls again must find the actor
            # dead (another thread of a threaded actor would still run that call)
            self._die(cause)
            self._sched.call_failed(spec, ActorDiedError(cause))
        else:
            self._sched.actor_crashed(self, spec, f"{spec.name} called sys.exit({exc.code!r})")

    def crash(self, spec, reason: str) -> None:
        """A crash of an actor hosted in the driver: restart while ``max_restarts`` allows; the call
        that crashed it fails either way."""
        restarting = self.kill(False, reason=reason)
        self._sched.call_failed(spec, ActorDiedError(
            f"The actor {self.spec.cls.name} died: {reason}{'; it is restarting' if restarting else ''}."))

    def _pump_async(self) -> None:
        while True:
            with self._cond:
                if not self._queue or self.state != "alive":
                    return
                spec = self._queue.popleft()
            if spec is _TERMINATE:
                self._loop.create_task(self._die_after_running())
                return
            self._running_async[spec.task_id] = (spec, self._loop.create_task(self._run_async(spec)))

    async def _run_async(self, spec) -> None:
        import asyncio

        try:
            async with self._group_semaphores.get(spec.options.get("concurrency_group"), self._semaphore):
                if self.state == "dead":
                    self._sched.call_failed(spec, ActorDiedError(self.cause))
                    return
                outputs = await self._call_of(spec).run_async(spec.args, spec.deps, self._sched.fetch)
            self._sched.call_done(spec, outputs)
        except SystemExit as exc:
            self.exited(spec, exc)
        except asyncio.CancelledError:
            self._sched.call_failed(spec, TaskCancelledError(f"{spec.name} was cancelled."))
        finally:
            self._running_async.pop(spec.task_id, None)

    async def _die_after_running(self) -> None:
        import asyncio

        running = [task for _, task in self._running_async.values()]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        self._die(self._gone_cause())

    def _gone_cause(self) -> str:
        return f"The actor {self.spec.cls.name} ended: every handle to it was gone."

    def terminate_after_pending(self) -> None:
        """End the actor once the calls already submitted have run (its last handle is gone)."""
        with self._cond:
            if self.state == "dead":
                return
            self._queue.append(_TERMINATE)
            self._cond.notify_all()
        if self._loop is not None and self.state == "alive":
            self._loop.call_soon_threadsafe(self._pump_async)

    def cancel(self, ref) -> bool:
        """Cancel a queued call (or a running async one) producing ``ref``; say whether it was ours."""
        with self._cond:
            for spec in self._queue:
                if spec is not _TERMINATE and ref in spec.returns:
                    self._queue.remove(spec)
                    break
            else:
                spec = None
        if spec is not None:
            self._sched.call_failed(spec, TaskCancelledError(f"{spec.name} was cancelled."))
            return True
        for running, ctx in list(self._running_sync.values()):
            if ref in running.returns:
                ctx.cancelled = True
                return True
        if self._loop is not None:
            for running, task in list(self._running_async.values()):
                if ref in running.returns:
                    self._loop.call_soon_threadsafe(task.cancel)
                    return True
        return False

    # -- death ----------------------------------------------------------------
    def kill(self, no_restart: bool, reason: str = "it was killed with anyray.kill()") -> bool:
        """End the actor, or restart it if ``no_restart`` is false and ``max_restarts`` allows;
        say whether it restarts."""
        max_restarts = self.spec.options["max_restarts"]
        with self._cond:
            if self.state == "dead":
                return False
            if not no_restart and allows_another(max_restarts, self.restarts):
                self.restarts += 1
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._restart_async)
                else:
                    self.state = "restarting"
                    self._cond.notify_all()
                return True
        self._die(f"The actor {self.spec.cls.name} is dead: {reason}.")
        return False

    def _restart_async(self) -> None:
        if self._construct():
            self._pump_async()

    def _die(self, cause: str) -> None:
        with self._cond:
            if self.state == "dead":
                return
            self.state = "dead"
            self.cause = cause
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for spec in pending:
            if spec is not _TERMINATE:
                self._sched.call_failed(spec, ActorDiedError(cause))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        for pool in (self._pool, *self._group_pools.values()):
            if pool is not None:
                pool.shutdown()
        if self.lease is not None:
            self._sched.release(self.lease)
            self.lease = None
        self._sched.actor_died(self)


def live_calls(host: ActorHost) -> list[tuple]:
    """(spec, state) of the calls ``host`` has not finished: Ray's state names, "RUNNING" for those started
    and "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY" for those waiting their turn (``anyray.util.state``)."""
    with host._cond:
        queued = [spec for spec in host._queue if spec is not _TERMINATE]
    running = [spec for spec, _ in list(host._running_sync.values()) + list(host._running_async.values())]
    return [(spec, "RUNNING") for spec in running] + \
        [(spec, "PENDING_ACTOR_TASK_ORDERING_OR_CONCURRENCY") for spec in queued]
