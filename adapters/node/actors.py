"""The node's actors: each gets a process of its own, started once the actor's resources are free; its
calls are sent as they are submitted, and the actor process starts them in order (``ActorHost``). An
actor whose process dies restarts while ``max_restarts`` allows; its calls in flight run again while
their ``max_task_retries`` allow."""

from __future__ import annotations

import os
import signal
import threading

from anyray.actor import ActorHandle
from anyray.exceptions import ActorDiedError, TaskCancelledError
from anyray.generators import stream_of
from anyray.policy import allows_another, call_retry_limit
from anyray.specs import ActorSpec, ActorTaskSpec

from ..common.placement_groups import route
from . import memory_monitor
from . import messages as m
from .pool import describe
from .remote_ports import call_options
from .send_window import window_of
from .store import ArenaObject, to_wire


class Actor:
    __slots__ = ("spec", "state", "worker", "lease", "restarts", "cause", "inflight", "buffered", "held",
                 "attempts", "terminate", "send_lock", "args_held", "job", "refused", "window")

    def __init__(self, spec: ActorSpec, args_held: ArenaObject | None, job: tuple):
        self.spec = spec
        self.job = job
        self.state = "pending"  # pending -> alive -> (restarting -> alive)* -> dead
        self.worker = None
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
        self.refused: BaseException | None = None  # why it can never be placed (its calls fail with it)
        self.window = window_of(spec)  # calls out to its process: bounded if it reads between calls only


class Actors:
    """``lock``: the node's lock; ``queues``: where an actor waits for its resources; ``names``: the named
    actors; ``seams``: actors and calls elsewhere, feasibility."""

    def __init__(self, lock, store, queues, names, ledger, functions, supervision, seams, job: tuple):
        self._lock = lock
        self._store = store
        self._names = names
        self._seams = seams
        self._job = job
        self._queues, self.release = queues, queues.release
        self.fail, self._own, self._wire, self._seal_wires = ledger.fail, ledger.own, ledger.wire, ledger.seal_wires
        self._blob = functions.blob
        self._spawn, self._send, self._exit = supervision.spawn, supervision.send, supervision.exit
        self._spawn_for = supervision.spawn_for
        self.actors: dict[bytes, Actor] = {}
        self.call_owner: dict[bytes, Actor] = {}  # first return id of each call in flight -> its actor

    def handle_of(self, actor_id: bytes):
        actor = self.actors.get(actor_id)
        if actor is None:
            return self._seams.remote_actors.handle_of(actor_id) if self._seams.remote_actors is not None else None
        return ActorHandle(actor_id, actor.spec.cls.name, actor.spec.method_options)

    def has_actor(self, actor_id: bytes) -> bool:
        """Whether the actor lives on this node."""
        return actor_id in self.actors

    def create_actor(self, spec: ActorSpec, held: ArenaObject | None = None, job: tuple | None = None):
        if self._seams.remote_actors is not None:
            return self._seams.remote_actors.create_actor(spec, held, job)
        return self.create_actor_here(spec, held, job)

    def create_actor_here(self, spec: ActorSpec, held: ArenaObject | None = None, job: tuple | None = None,
                          restarts: int = 0):
        """Create the actor on this node (``restarts``: how often it restarted on nodes that died)."""
        winner = self._names.claim(spec)
        if winner is not None:  # get_if_exists, and another caller created it first
            if held is not None:
                self._store.drop(held)
            return winner
        queues, refused = route(self._seams.groups, spec.options.get("scheduling_strategy"), actor=True)
        if spec.resources and queues is None and refused is None:
            self._seams.feasibility.check(spec.actor_id, spec.cls.name, spec.resources)
        if held is None and spec.args is not None:
            spec.args, held = self._own(spec.args)
        actor = Actor(spec, held, job or self._job)
        actor.restarts = restarts
        with self._lock:
            self.actors[spec.actor_id] = actor
        if refused is not None:  # its calls fail with that error
            actor.refused = refused
            self._actor_dead(actor, str(refused))
        else:  # in the node's queues, or its placement group bundle's
            (queues or self._queues).enqueue(spec.resources, lambda lease: self._actor_lease(actor, lease))
        return None

    def _actor_lease(self, actor: Actor, lease) -> None:
        with self._lock:
            dead = actor.state == "dead"
            if not dead:
                actor.lease = lease
        if dead:
            self.release(lease)
        else:
            self._start_actor_process(actor)

    def _start_actor_process(self, actor: Actor) -> None:
        spec = actor.spec
        gpu_ids = actor.lease.gpu_ids
        worker = self._spawn_for({"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpu_ids)} if gpu_ids else None,
                                 spec.options.get("runtime_env"), lambda built: _env_built(self, actor, built))
        if worker is None:
            return  # its Python environment (pip/uv) is being built: _env_built goes on
        worker.actor = actor
        worker.job = actor.job
        cls = spec.cls
        blob = self._blob(cls)
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
                buffered = [call for call in buffered if actor.window.take(call)]  # the rest: as answers come
            self._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_CREATE, m.ActorCreate.pack(
                spec.actor_id, cls.function_id, blob, cls.name, args, [r._id for r in spec.deps], spec.resources,
                spec.options, spec.namespace, spec.is_async, gpu_ids, actor.restarts, actor.job)))
            for call in buffered:
                self._send_call(actor, worker, call)
            if actor.terminate and actor.window.end_after_calls():  # else the last call waiting takes it along
                self._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_TERMINATE, None))

    def _send_call(self, actor: Actor, worker, spec: ActorTaskSpec) -> None:
        held = actor.held.get(spec.task_id)
        args = self._wire(worker, spec.task_id, held) if held is not None else to_wire(spec.args)
        self._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_CALL, m.ActorCall.pack(
            spec.task_id, spec.method_name, args, [r._id for r in spec.deps], [r._id for r in spec.returns],
            call_options(spec.options), spec.name, spec.caller_id, spec.seq, stream_of(spec.options))))

    def submit_actor_task(self, spec: ActorTaskSpec, held: ArenaObject | None = None) -> None:
        actor = self.actors.get(spec.actor_id)
        if actor is None:
            if self._seams.remote_calls is not None and self._seams.remote_calls.submit(spec, held):
                return
            self.fail(spec.returns, ActorDiedError(f"No actor with id {spec.actor_id.hex()} exists in this job."))
            return
        if held is None:
            spec.args, held = self._own(spec.args)
        with actor.send_lock:
            with self._lock:
                dead = actor.state == "dead"
                if not dead:
                    actor.inflight[spec.task_id] = spec
                    if spec.returns:
                        self.call_owner[spec.returns[0]._id] = actor
                    if held is not None:
                        actor.held[spec.task_id] = held
                    worker = actor.worker if actor.state == "alive" else None
                    if worker is None:
                        actor.buffered.append(spec)
                    elif not actor.window.take(spec):
                        worker = None  # it waits for room in the window: a send never blocks this thread
            if not dead and worker is not None:
                self._send_call(actor, worker, spec)
        if dead:
            if held is not None:
                self._store.drop(held)
            self.fail(spec.returns, actor.refused or ActorDiedError(actor.cause))

    def call_result(self, actor: Actor, worker, task_id: bytes, wires, contained) -> None:
        with self._lock:
            spec = actor.inflight.pop(task_id, None)
            if spec is not None and spec in actor.buffered:  # done by the old process after all
                actor.buffered.remove(spec)
            held = actor.held.pop(task_id, None)
            actor.attempts.pop(task_id, None)
            if spec is not None and spec.returns:
                self.call_owner.pop(spec.returns[0]._id, None)
        if held is not None:
            self._store.drop(held)
        if spec is not None:
            self._seal_wires(worker, [r._id for r in spec.returns], wires, contained)
        _answered(self, actor, worker, task_id)

    def actor_exited(self, actor: Actor, worker) -> None:
        oom = memory_monitor.killed_for_memory(worker.handle)  # by the memory monitor: calls get OutOfMemoryError
        how = describe(worker.handle.exit.returncode) if worker.handle.exit else "exit status unknown"
        self._restart_or_die(actor, worker, oom or f"The actor {actor.spec.cls.name} died: its process {how}",
                             memory_monitor.error if oom else None)

    def _restart_or_die(self, actor: Actor, worker, cause: str, error=None) -> None:
        """The actor's process is gone (or going): restart it while ``max_restarts`` allows, else it is dead."""
        spec = actor.spec
        max_restarts = spec.options["max_restarts"]
        retried, failed = [], []
        with self._lock:
            if actor.worker is not worker or actor.state == "dead":
                return
            actor.worker = None
            actor.window.clear()  # the calls waiting for room are retried or fail with those it ran
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
            actor.refused = error(cause) if error else actor.refused  # later calls fail with it too
            self._actor_dead(actor, (cause if error else f"{cause}.") if not actor.cause else actor.cause, error)
            return
        for call, held in failed:
            if held is not None:
                self._store.drop(held)
            self.fail(call.returns, error(cause) if error else ActorDiedError(
                f"{cause} while running {call.name}; it is restarting (pass max_task_retries to retry such "
                f"calls)."))
        self._start_actor_process(actor)

    def _actor_dead(self, actor: Actor, cause: str, error=None) -> None:
        with self._lock:
            if actor.state == "dead":
                return
            actor.state = "dead"
            actor.cause = cause
            calls = list(actor.inflight.values())
            actor.inflight.clear()
            actor.buffered.clear()
            actor.window.clear()
            held = list(actor.held.values())
            actor.held.clear()
            lease, actor.lease = actor.lease, None
            args_held, actor.args_held = actor.args_held, None
        for entry in held + ([args_held] if args_held is not None else []):
            self._store.drop(entry)
        for call in calls:
            self.fail(call.returns, error(cause) if error else ActorDiedError(cause))
        self._names.release(actor.spec)
        if lease is not None:
            self.release(lease)

    def get_named_actor(self, name: str, namespace: str):
        actor_id = self._names.actor_id(name, namespace)
        actor = self.actors.get(actor_id) if actor_id is not None else None
        if actor is None or actor.state == "dead":
            return self._seams.remote_actors.named(name, namespace) if self._seams.remote_actors is not None else None
        return ActorHandle(actor.spec.actor_id, actor.spec.cls.name, actor.spec.method_options)

    def actor_handles_gone(self, actor_id: bytes) -> None:
        if self._seams.remote_actors is not None and self._seams.remote_actors.handles_gone(actor_id):
            return
        actor = self.actors.get(actor_id)
        if actor is None or actor.spec.options["lifetime"] == "detached":
            return
        with actor.send_lock:
            with self._lock:
                if actor.state == "dead" or actor.terminate:
                    return
                actor.terminate = True
                worker = actor.worker if actor.state == "alive" and actor.window.end_after_calls() else None
            if worker is not None:
                self._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_TERMINATE, None))

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        if self._seams.remote_actors is not None and self._seams.remote_actors.kill(actor_id, no_restart):
            return
        actor = self.actors.get(actor_id)
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

    def died(self, worker, body) -> None:
        """The actor process says its actor is dead (``ACTOR_DIED``): it ends, and the process with it."""
        actor = worker.actor
        if actor is not None and actor.worker is worker:
            self._actor_dead(actor, m.ActorDied._make(body).cause)
            self._exit(worker)

    def cancel(self, ref) -> bool:
        """Cancel the actor call that returns ``ref``; False if no actor here has it."""
        for actor in list(self.actors.values()):
            if _cancel_call(self, actor, ref):
                return True
        return False

    def worker_of_call(self, oid: bytes):
        """The actor process running the call that returns ``oid``, if one does."""
        actor = self.call_owner.get(oid)
        return actor.worker if actor is not None else None


def _env_built(actors: Actors, actor: Actor, built) -> None:
    """The Python environment ``actor`` waited for is built (an interpreter), or failed: then it dies."""
    if isinstance(built, BaseException):
        actors._actor_dead(actor, f"The actor {actor.spec.cls.name} died: its runtime_env could not be set up: "
                                  f"RuntimeEnvSetupError: {built}")
    elif actor.state != "dead":
        actors._start_actor_process(actor)


def kill_in_group(actors: Actors, actor: Actor, cause: str) -> None:
    """``actor``'s placement group was removed: it dies (no restart) and its process is killed."""
    with actors._lock:
        worker = actor.worker
    actors._actor_dead(actor, cause)
    if worker is not None:
        worker.handle.kill()


def _send_waiting(actors: Actors, actor: Actor, worker) -> None:
    """Send the calls that waited for room in ``actor``'s window (``send_window.py``), as many as fit
    now, in order; then the actor's end if it is due."""
    with actor.send_lock:
        while True:
            with actors._lock:
                alive = actor.worker is worker and actor.state == "alive"
                call = actor.window.next(actor.inflight) if alive else None
                end = alive and actor.window.ends_now()
            if call is not None:
                actors._send_call(actor, worker, call)
            if end:
                actors._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_TERMINATE, None))
            if call is None:
                return


def _cancel_call(actors: Actors, actor: Actor, ref) -> bool:
    """Cancel the call of ``actor`` that returns ``ref``: fail it if it was not sent, else tell the process;
    False if ``actor`` has no such call."""
    with actors._lock:
        spec = next((s for s in actor.inflight.values() if ref in s.returns), None)
        if spec is None:
            return False
        queued = spec in actor.buffered
        if queued:
            actor.buffered.remove(spec)
        queued = queued or actor.window.drop(spec)  # not sent yet (its window was full): as one buffered
        held = None
        if queued:
            actor.inflight.pop(spec.task_id, None)
            actor.attempts.pop(spec.task_id, None)
            held = actor.held.pop(spec.task_id, None)
            actors.call_owner.pop(ref._id, None)
        worker = actor.worker
    if held is not None:
        actors._store.drop(held)
    if queued:
        actors.fail(spec.returns, TaskCancelledError(f"{spec.name} was cancelled."))
    elif worker is not None and actors._send(worker, m.ACTOR, m.ActorOp.pack(m.ACTOR_CANCEL, ref._id)) \
            and not actor.spec.is_async and actor.spec.max_concurrency == 1 \
            and not actor.spec.options.get("concurrency_groups") \
            and worker.handle.pid and worker.handle.alive:
        try:  # a sync actor runs its call on the thread that reads: the signal makes it read the cancel
            os.kill(worker.handle.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    return True


def _answered(actors: Actors, actor: Actor, worker, task_id) -> None:
    """A call of ``actor`` was answered: the calls that waited for room in its window go now, as many as fit."""
    if actor.window.bounded:
        with actors._lock:
            more = actor.window.answered(task_id)
        if more:
            _send_waiting(actors, actor, worker)
