"""The actor a worker process hosts (one at most), and the ACTOR messages that drive it.

A sync actor with ``max_concurrency`` 1 runs its calls on the main thread of
its process, as tasks do (``InlineActor``); a threaded or async actor runs
them on threads of an ``ActorHost``, while the main thread reads the
connection (``ActorHostShim`` is what the host needs of the worker).
"""

from __future__ import annotations

import os
import pickle
import sys

from anyray.actor import exit_is_intended
from anyray.backend_kit.actor_host import ActorHost
from anyray.context import TaskContext
from anyray.exceptions import ActorDiedError, RuntimeEnvSetupError, TaskCancelledError
from anyray.executor import Call, serialize_failure
from anyray.generators import StreamSpec
from anyray.object_ref import ObjectRef
from anyray.policy import call_retry_limit
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure
from anyray.util.scheduling_strategies import placement_of

from ..common.resources import Lease
from . import messages as m
from . import worker_env
from .arena import Location

_BODY = {m.ACTOR_CREATE: m.ActorCreate, m.ACTOR_CALL: m.ActorCall}  # the kinds whose body is a message


def stream_spec(return_ids: list, stream: tuple) -> StreamSpec:
    """The executor's ``StreamSpec`` of a generator task or call, from its message's ``stream``: the
    generator id is its one return id."""
    mode, backpressure = stream
    return StreamSpec(generator_id=return_ids[0], mode=mode, backpressure=backpressure)


class ActorMessages:
    """The ACTOR messages of a worker: one handler per kind."""

    def __init__(self, node):
        self.node = node
        self.handlers = {m.ACTOR_CREATE: self.create, m.ACTOR_CALL: self.call, m.ACTOR_CANCEL: self.cancel,
                         m.ACTOR_TERMINATE: self.terminate}

    def on_message(self, payload) -> None:
        try:
            op = m.ActorOp._make(pickle.loads(payload))
            kind = _BODY.get(op.kind)
            body = op.body if kind is None else kind._make(op.body)
        except Exception as exc:  # noqa: BLE001 - which call it was is unknown: the actor cannot go on
            self.node.send(m.ACTOR_DIED, m.ActorDied.pack(None, f"The actor died: a message to it could not be "
                                                                 f"read in its process: {type(exc).__name__}: {exc}"))
            return
        handler = self.handlers.get(op.kind)
        if handler is not None:
            handler(body)

    def create(self, msg: m.ActorCreate) -> None:
        node = self.node
        actor_id, name = msg.actor_id, msg.name
        node.runtime.job_id, node.runtime.namespace = msg.job
        try:
            worker_env.ensure(node)
        except RuntimeEnvSetupError as exc:
            node.send(m.ACTOR_DIED, m.ActorDied.pack(actor_id, f"The actor {name} died: its runtime_env could not "
                                                               f"be set up: RuntimeEnvSetupError: {exc}"))
            return
        try:
            cls = node.function(msg.cls_id, msg.blob)
        except Exception as exc:  # noqa: BLE001 - e.g. its module does not import here
            cause = (f"The actor {name} died: its class could not be loaded in the actor's process: "
                     f"{type(exc).__name__}: {exc}")
            node.send(m.ACTOR_DIED, m.ActorDied.pack(actor_id, cause))
            return
        gpu_ids = msg.gpu_ids
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        spec = ActorSpec(actor_id=actor_id, cls=FunctionDescriptor(msg.cls_id, name, cls),
                         args=node.from_wire(actor_id, msg.args), deps=[ObjectRef(i) for i in msg.dep_ids],
                         resources=msg.resources, options=msg.options, namespace=msg.namespace, is_async=msg.is_async)
        if spec.max_concurrency == 1 and not msg.is_async and not spec.options.get("concurrency_groups"):
            node.inline = InlineActor(node, spec, gpu_ids, msg.restarts)
            node._tasks.append((node.inline.construct, None))
            if node.setup.get("direct") and not spec.options.get("max_task_retries"):
                from .worker_direct import DirectServer  # a cluster node's: drivers may call it directly

                try:
                    node.direct = DirectServer(node, node.setup["direct"])
                except OSError as exc:  # calls come through the node only
                    print(f"anyray: the actor's socket for direct calls could not be opened: {exc}",
                          file=sys.stderr)
            return
        node.actor = ActorHost(spec, ActorHostShim(node, gpu_ids))
        node.interrupts.reads_itself = True  # the main thread reads all the time: no thread reads for itself
        node.actor.restarts = msg.restarts
        node.actor.start()

    def call(self, msg: m.ActorCall) -> None:
        node = self.node
        if node.inline is not None:
            if node.direct is not None:  # direct calls that came first go first
                node.direct.drain()
            node._tasks.append((node.inline.call, msg))
            return
        task_id = msg.task_id
        spec = ActorTaskSpec(task_id=task_id, actor_id=node.actor.spec.actor_id, method_name=msg.method,
                             args=node.from_wire(task_id, msg.args), deps=[ObjectRef(i) for i in msg.dep_ids],
                             returns=[ObjectRef(i) for i in msg.return_ids], caller_id=msg.caller_id, seq=msg.seq,
                             options=msg.options, name=msg.name)
        node.actor.submit(spec)

    def cancel(self, oid: bytes) -> None:
        node = self.node
        if node.inline is not None:
            node.inline.cancel(oid)
        elif node.actor is not None:
            node.actor.cancel(ObjectRef(oid))

    def terminate(self, _) -> None:
        node = self.node
        if node.inline is not None:
            node._tasks.append((node.inline.terminate, None))
        elif node.actor is not None:
            node.actor.terminate_after_pending()


class InlineActor:
    """A sync actor with ``max_concurrency`` 1, run by the main thread of its process: each call runs
    where it is read, in order, with no thread hand-off."""

    def __init__(self, node, spec: ActorSpec, gpu_ids, restarts: int):
        self.node = node
        self.spec = spec
        self._info = spec.info()
        self.gpu_ids = gpu_ids
        self.restarts = restarts
        self.instance = None
        self.cause = ""  # set once dead
        self.running = None  # (return ids, context) of the call running now

    def _context(self, task_id, name: str) -> TaskContext:
        return TaskContext(task_id=task_id, actor_id=self.spec.actor_id, name=name, actor=self._info,
                           resources=dict(self.spec.resources), gpu_ids=self.gpu_ids, restarted=self.restarts > 0,
                           placement=placement_of(self.spec.options.get("scheduling_strategy")))

    def construct(self, _) -> None:
        spec, node = self.spec, self.node
        call = Call(spec.cls.target, spec.cls.name, "actor_creation", self._context(spec.actor_id, spec.cls.name),
                    1, node.events)
        try:
            result = call.invoke(spec.args, spec.deps, node.fetch)
        except SystemExit as exc:
            result = RemoteFailure(RuntimeError(f"it called sys.exit({exc.code!r})"))
        spec.args = None
        if type(result) is RemoteFailure:
            self._die(f"The actor {spec.cls.name} died because its constructor raised:\n{result.error}")
        else:
            self.instance = result[0]

    def call_direct(self, item) -> None:
        """A call a driver sent straight here (``worker_direct``): its result goes back the same way."""
        conn, msg = item
        direct = self.node.direct

        def reply(task_id, outputs):
            direct.reply(conn, task_id, msg.return_ids, outputs)
        if msg.return_ids and msg.return_ids[0] in direct.cancelled:  # cancelled before it was read
            error = TaskCancelledError(f"{msg.name} was cancelled.")
            reply(msg.task_id, [serialize_failure(RemoteFailure(error))] * len(msg.return_ids))
            return
        self.call(msg, reply)

    def call(self, msg: m.ActorCall, reply=None) -> None:
        task_id, return_ids, name, options = msg.task_id, msg.return_ids, msg.name, msg.options
        node = self.node
        send_result = node.send_result if reply is None else reply
        if self.cause:
            if type(msg.args) is Location:
                node._unpins.append(task_id)
            send_result(task_id, [serialize_failure(RemoteFailure(ActorDiedError(self.cause)))] * len(return_ids))
            return
        stream = msg.stream
        call = Call(getattr(self.instance, msg.method), name, "actor_task", self._context(task_id, name),
                    len(return_ids), node.events, options.get("retry_exceptions") or False,
                    call_retry_limit(options, self.spec.options),
                    stream=None if stream is None else stream_spec(return_ids, stream))
        self.running = (return_ids, call.ctx)  # a cancel of this call flags it (the driver sends SIGINT)
        try:
            outputs = call.run(node.from_wire(task_id, msg.args), [ObjectRef(i) for i in msg.dep_ids], node.fetch)
        except SystemExit as exc:
            del call
            if not exit_is_intended(exc):
                node.exit_process(1)  # a crash: the node restarts the actor while max_restarts allows
            cause = (f"The actor {self.spec.cls.name} exited on purpose: {name} called exit_actor() or "
                     f"sys.exit(0); it is not restarted.")
            send_result(task_id, [serialize_failure(RemoteFailure(ActorDiedError(cause)))] * len(return_ids))
            self._die(cause)
            return
        finally:
            self.running = None
        del call
        node.runtime.counter.drain()
        send_result(task_id, outputs)

    def cancel(self, oid: bytes) -> None:
        """Cancel a call queued here; a running one goes on, flagged (``is_canceled()``), and its
        result is dropped for TaskCancelledError, as in Ray."""
        running = self.running
        if running is not None and oid in running[0]:
            running[1].cancelled = True
            return
        for item in self.node._tasks:
            run, msg = item
            if run == self.call_direct and oid in msg[1].return_ids:  # a direct call, queued
                self.node._tasks.remove(item)
                self.node.direct.cancelled.append(oid)
                self.call_direct(msg)
                return
            if run == self.call and oid in msg.return_ids:
                self.node._tasks.remove(item)
                if type(msg.args) is Location:
                    self.node._unpins.append(msg.task_id)  # its arguments were never read
                error = TaskCancelledError(f"{msg.name} was cancelled.")
                self.node.send_result(msg.task_id, [serialize_failure(RemoteFailure(error))] * len(msg.return_ids))
                return
        if self.node.direct is not None:  # a direct call not read yet
            self.node.direct.cancelled.append(oid)

    def terminate(self, _) -> None:
        self._die(f"The actor {self.spec.cls.name} ended: every handle to it was gone.")

    def _die(self, cause: str) -> None:
        if self.cause:
            return
        self.cause = cause
        self.instance = None
        self.node.send(m.ACTOR_DIED, m.ActorDied.pack(self.spec.actor_id, cause))


class ActorHostShim:
    """What ``ActorHost`` needs from its host, in a worker: results go to the driver."""

    def __init__(self, node, gpu_ids):
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
        self.node.send(m.ACTOR_DIED, m.ActorDied.pack(actor.spec.actor_id, actor.cause))

    def actor_crashed(self, actor: ActorHost, spec, reason: str) -> None:
        self.node.exit_process(1)  # the node sees the process die and restarts the actor as after any crash
