"""The worker side of a node: runs tasks and hosts actors, and gives user code a full anyray runtime.

``install(setup)`` turns a bare worker (``workers.worker_main``) into a
node worker: the reader moves to a thread of its own and the main thread
runs tasks, so a task's ``cancel`` can interrupt it with SIGINT even in a
blocking call. User code inside a task sees an ordinary ``Runtime`` whose
backend forwards every port call to the driver (``link.RemoteScheduler``,
``link.RemoteStore``): nested tasks, actors, ``get``/``put``/``wait`` all work.

References held here are borrowed from the driver (see ``protocol``): this
process's counters report each id's first reference and its last, and the
views of shared memory report when they are gone, so the driver keeps what
this worker can still read.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import pickle
import signal
import sys
import threading
import time

import cloudpickle

from anyray import serialization
from anyray.actor import exit_is_intended
from anyray.context import TaskContext
from anyray.events import JobEvents
from anyray.exceptions import ActorDiedError, TaskCancelledError, TaskError
from anyray.executor import Call, failure_for, serialize_failure
from anyray.object_ref import ObjectRef
from anyray.policy import call_retry_limit
from anyray.ports.backend import Backend, BackendConfig
from anyray.runtime import Runtime, set_current
from anyray.serialization import SerializedObject
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure

from ..common.actor_host import ActorHost
from ..common.resources import Lease
from . import messages as m
from . import workers
from .arena import Location
from .link import FLUSH_INTERVAL, Link, RemoteScheduler, RemoteStore
from .store import to_wire

log = logging.getLogger(__name__)


class _ForwardedEvents(JobEvents):
    """Task records of this worker: echoed here (stderr is the driver's) and sent with the next result."""

    def __init__(self):
        super().__init__(max_spans=1000)
        self.outbox: list = []

    def task_finished(self, record) -> None:
        super().task_finished(record)
        self.outbox.append(tuple(m.RecordRow(record.task_id, record.name, record.kind, record.start, record.end,
                                             record.pid, record.tid, record.error_type, record.message)))

    def take(self) -> list:
        out, self.outbox = self.outbox, []
        return out


class WorkerNode(Link):
    """Everything of one worker process: its link to the node, its runtime, the task it runs or the
    actor it hosts."""

    def __init__(self, loop: workers.WorkerLoop, setup: dict):
        super().__init__(loop.conn, setup)
        self.loop = loop
        self._tasks: collections.deque = collections.deque()  # (run, arg) for the main thread, in order
        self._current: bytes | None = None  # the task the main thread runs
        self._early_cancels: collections.deque = collections.deque(maxlen=64)  # cancels of tasks not current
        self._exit = False
        self.events = _ForwardedEvents()
        self.output: collections.deque = collections.deque()  # (job id, stream, text) printed, not yet sent
        self.captured = False
        self.actor: ActorHost | None = None      # a threaded or async actor hosted here
        self.inline: _InlineActor | None = None  # a sync actor whose calls run on the main thread
        config = BackendConfig(num_cpus=None, namespace=setup["namespace"], job_id=setup["job_id"],
                               options={"node": self})
        self.runtime = Runtime(WorkerBackend, config, counters=self.counters())
        set_current(self.runtime)

    def function(self, fn_id: bytes, blob: bytes | None):
        fn = self._functions.get(fn_id)
        if fn is None:
            fn = self._functions[fn_id] = cloudpickle.loads(blob)
            self.exported.add(fn_id)
        return fn

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
                log.exception("a worker could not handle a message")

    def _dispatch(self, msg: bytes) -> None:
        """Handle one message, on whichever thread read it; a task is queued for the main thread."""
        tag = msg[0]
        body = memoryview(msg)[1:]
        if tag == m.RESPONSE:
            self._on_response(body)
        elif tag == m.TASK:
            self._tasks.append((self._run_task, body))
        elif tag == m.ACTOR:
            self._on_actor(body)
        elif tag == m.CANCEL:
            self._on_cancel(body)
        elif tag == workers.EXIT:
            self._exit = True
        elif tag == workers.CALL:
            self.loop._call(body)
        else:
            log.error("a worker got a message it has no handler for (tag %s)", tag)

    # -- output -----------------------------------------------------------------------
    def capture_output(self) -> None:
        """Send what tasks print to the node, for their drivers (a cluster node's workers)."""
        sys.stdout = _Captured(self, "stdout", sys.stdout)
        sys.stderr = _Captured(self, "stderr", sys.stderr)
        self.captured = True

    def send_output(self) -> None:
        out = []
        while self.output:
            out.append(self.output.popleft())
        if out:
            self.send(m.OUTPUT, out)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                if self.output:
                    self.send_output()
            except (OSError, ConnectionError):
                return
            if not self._flush_once():
                return

    def _run_task(self, payload) -> None:
        try:
            task = m.Task._make(pickle.loads(payload))
        except Exception as exc:  # noqa: BLE001 - the task's caller gets the error, whatever it is
            error = TaskError.from_exception("the task", exc, os.getpid())
            self.send(m.RESULT, tuple(m.Result(None, [to_wire(serialize_failure(RemoteFailure(error)))], [None], [])))
            return  # None: the task this worker was sent (the driver knows which)
        if task.job is not None:  # a task of another driver's job than the last one (a cluster node)
            self.runtime.job_id, self.runtime.namespace = task.job
        task_id, dep_wires, return_ids, name = task.task_id, task.deps, task.return_ids, task.name
        unread = {key for key, wire in dep_wires.items() if type(wire) is Location}
        if type(task.args) is Location:
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
            self._cancelled_before_start(task_id)
            fn = self.function(task.fn_id, task.blob)
            unread.discard(task_id)
            args = self.from_wire(task_id, task.args)
            gpu_ids = task.gpu_ids
            if gpu_ids:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
            ctx = TaskContext(task_id=task_id, name=name, resources=task.resources, gpu_ids=gpu_ids)
            call = Call(fn, name, "task", ctx, len(return_ids), self.events, task.retry_exceptions, task.max_retries)
            deps = [ObjectRef(oid) for oid in task.dep_ids]
            outputs = call.run(args, deps, fetch)
            self._running = False
            del args, deps, call
        except BaseException as exc:  # noqa: BLE001 - a cancel can land outside the user's code
            self._running = False
            if isinstance(exc, SystemExit):  # as in Ray: the worker exits, and the task is retried or
                self.exit_process(exc.code)  # fails with WorkerCrashedError
            if isinstance(exc, KeyboardInterrupt):
                exc = TaskCancelledError(f"{name} was interrupted.")
            outputs = [serialize_failure(failure_for(exc, name))] * len(return_ids)  # e.g. its code failed to load
        self._current, self._cancel = None, False
        self._unpins.extend(unread)
        self.runtime.counter.drain()  # refs the task dropped cancel out before the result goes
        self.send_result(task_id, outputs)

    def send_result(self, task_id: bytes, outputs: list[SerializedObject]) -> None:
        if self.captured:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        if self.output:
            self.send_output()  # what the task printed reaches its driver before its result
        wires, contained = [], []
        for obj in outputs:
            try:
                wires.append(self.to_node(obj))
            except Exception as exc:  # noqa: BLE001 - the store is full, say: the result is that error
                wires.append(to_wire(serialize_failure(RemoteFailure(exc))))
            contained.append(m.contained_ids(obj.contained_refs) if obj.contained_refs else None)
        self.send(m.RESULT, tuple(m.Result(task_id, wires, contained, self.events.take())))

    def exit_process(self, code) -> None:
        """End this worker process as ``sys.exit(code)`` in a task asks, once what it printed is sent:
        the node handles it as any worker that died (retries, actor restarts)."""
        try:
            if self.captured:
                for stream in (sys.stdout, sys.stderr):
                    stream.flush()
            if self.output:
                self.send_output()
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
        os._exit(code if type(code) is int and 0 < code < 256 else 1)

    def _cancelled_before_start(self, task_id: bytes) -> None:
        """Raise ``KeyboardInterrupt`` if the task's cancel came before it started here.

        The node sends CANCEL, then SIGINT. A SIGINT that lands before the task runs finds nothing to
        interrupt, and then nobody reads the connection while the task runs: so read what has arrived
        now (with SIGINT held off, as in a request), and look for a cancel read before the task was
        current (by another thread)."""
        if task_id in self._early_cancels:
            self._early_cancels.remove(task_id)
            raise KeyboardInterrupt("The task was cancelled.")
        self._pumping = True
        try:
            if self._read_lock.acquire(False):
                try:
                    conn = self.conn
                    while conn.poll(0):
                        self._dispatch(conn.recv_bytes())
                finally:
                    self._read_lock.release()
        finally:
            self._pumping = False
            self._held_interrupt = False  # its CANCEL, if it was for this task, is in self._cancel now
        if self._cancel:
            self._cancel = False
            raise KeyboardInterrupt("The task was cancelled.")

    def _on_cancel(self, payload) -> None:
        task_id = pickle.loads(payload)
        if task_id != self._current or not self._running:
            self._early_cancels.append(task_id)  # not started yet (or finished: then never looked up)
            return
        self._cancel = True
        if threading.get_ident() != self.main_thread:
            signal.pthread_kill(self.main_thread, signal.SIGINT)  # the main thread raises it

    def _on_sigint(self, signum, frame) -> None:
        """A cancel while the main thread runs user code (the driver sends SIGINT after CANCEL).

        Reads what has arrived, unless another thread reads now (that one passes a cancel on as
        another SIGINT), and raises ``KeyboardInterrupt`` in the task if its cancel is there (the task
        then fails with ``TaskCancelledError``). A cancel that comes while the main thread sends a
        message waits until the message is out."""
        if not self._running and (self.inline is None or self.inline.running is None):
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
        try:
            op = m.ActorOp._make(pickle.loads(payload))
            kind, body = op.kind, op.body
            if kind == m.ACTOR_CALL:
                body = m.ActorCall._make(body)
            elif kind == m.ACTOR_CREATE:
                body = m.ActorCreate._make(body)
        except Exception as exc:  # noqa: BLE001 - which call it was is unknown: the actor cannot go on
            self.send(m.ACTOR_DIED, tuple(m.ActorDied(None, f"The actor died: a message to it could not be read in "
                                                            f"its process: {type(exc).__name__}: {exc}")))
            return
        inline = self.inline
        if kind == m.ACTOR_CALL:
            if inline is not None:
                self._tasks.append((inline.call, body))
            else:
                self._actor_call(body)
        elif kind == m.ACTOR_CREATE:
            self._actor_create(body)
        elif kind == m.ACTOR_CANCEL:
            if inline is not None:
                inline.cancel(body)
            elif self.actor is not None:
                self.actor.cancel(ObjectRef(body))
        elif kind == m.ACTOR_TERMINATE:
            if inline is not None:
                self._tasks.append((inline.terminate, None))
            elif self.actor is not None:
                self.actor.terminate_after_pending()

    def _actor_create(self, msg: m.ActorCreate) -> None:
        actor_id, name = msg.actor_id, msg.name
        self.runtime.job_id, self.runtime.namespace = msg.job
        try:
            cls = self.function(msg.cls_id, msg.blob)
        except Exception as exc:  # noqa: BLE001 - e.g. its module does not import here
            cause = (f"The actor {name} died: its class could not be loaded in the actor's process: "
                     f"{type(exc).__name__}: {exc}")
            self.send(m.ACTOR_DIED, tuple(m.ActorDied(actor_id, cause)))
            return
        gpu_ids = msg.gpu_ids
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        spec = ActorSpec(actor_id=actor_id, cls=FunctionDescriptor(msg.cls_id, name, cls),
                         args=self.from_wire(actor_id, msg.args), deps=[ObjectRef(i) for i in msg.dep_ids],
                         resources=msg.resources, options=msg.options, namespace=msg.namespace, is_async=msg.is_async)
        if spec.max_concurrency == 1 and not msg.is_async:
            self.inline = _InlineActor(self, spec, gpu_ids, msg.restarts)
            self._tasks.append((self.inline.construct, None))
            return
        host = _ActorHostShim(self, gpu_ids)
        self.actor = ActorHost(spec, host)
        self.actor.restarts = msg.restarts
        self.actor.start()

    def _actor_call(self, msg: m.ActorCall) -> None:
        task_id = msg.task_id
        spec = ActorTaskSpec(task_id=task_id, actor_id=self.actor.spec.actor_id, method_name=msg.method,
                             args=self.from_wire(task_id, msg.args), deps=[ObjectRef(i) for i in msg.dep_ids],
                             returns=[ObjectRef(i) for i in msg.return_ids], caller_id=msg.caller_id, seq=msg.seq,
                             options=msg.options, name=msg.name)
        self.actor.submit(spec)

    def fetch(self, refs) -> list:
        """Values of ``refs`` (failures left as values), asked from the driver."""
        return [serialization.deserialize(o) for o in self.get([r._id for r in refs], None)]


class _Captured(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker whose output goes to the drivers of its tasks."""

    def __init__(self, node: WorkerNode, stream: str, original):
        self._node, self._stream, self._original = node, stream, original
        self._partial = ""  # the start of a line not ended yet
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:  # whole lines go out, each piece of print() does not
            text = self._partial + text
            cut = text.rfind("\n") + 1
            self._partial = text[cut:]
            if cut:
                self._node.output.append(tuple(m.OutputLine(self._node.runtime.job_id, self._stream, text[:cut])))
        return len(text)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Send a line not ended yet too (explicit flushes, and the end of each task)."""
        with self._lock:
            if self._partial:
                self._node.output.append(tuple(m.OutputLine(self._node.runtime.job_id, self._stream, self._partial)))
                self._partial = ""

    @property
    def encoding(self):
        return getattr(self._original, "encoding", "utf-8")


class _InlineActor:
    """A sync actor with ``max_concurrency`` 1, run by the main thread of its process: each call runs
    where it is read, in order, with no thread hand-off."""

    def __init__(self, node: WorkerNode, spec: ActorSpec, gpu_ids, restarts: int):
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
                           resources=dict(self.spec.resources), gpu_ids=self.gpu_ids, restarted=self.restarts > 0)

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

    def call(self, msg: m.ActorCall) -> None:
        task_id, return_ids, name, options = msg.task_id, msg.return_ids, msg.name, msg.options
        node = self.node
        if self.cause:
            if type(msg.args) is Location:
                node._unpins.append(task_id)
            node.send_result(task_id, [serialize_failure(RemoteFailure(ActorDiedError(self.cause)))] * len(return_ids))
            return
        call = Call(getattr(self.instance, msg.method), name, "actor_task", self._context(task_id, name),
                    len(return_ids), node.events, options.get("retry_exceptions") or False,
                    call_retry_limit(options, self.spec.options))
        self.running = (return_ids, call.ctx)  # a cancel of this call flags it (the driver sends SIGINT)
        try:
            outputs = call.run(node.from_wire(task_id, msg.args), [ObjectRef(i) for i in msg.dep_ids], node.fetch)
        except SystemExit as exc:
            del call
            if not exit_is_intended(exc):
                node.exit_process(1)  # a crash: the node restarts the actor while max_restarts allows
            cause = (f"The actor {self.spec.cls.name} exited on purpose: {name} called exit_actor() or "
                     f"sys.exit(0); it is not restarted.")
            node.send_result(task_id, [serialize_failure(RemoteFailure(ActorDiedError(cause)))] * len(return_ids))
            self._die(cause)
            return
        finally:
            self.running = None
        del call
        node.runtime.counter.drain()
        node.send_result(task_id, outputs)

    def cancel(self, oid: bytes) -> None:
        """Cancel a call queued here; a running one goes on, flagged (``is_canceled()``), and its
        result is dropped for TaskCancelledError, as in Ray."""
        running = self.running
        if running is not None and oid in running[0]:
            running[1].cancelled = True
            return
        for item in self.node._tasks:
            run, msg = item
            if run == self.call and oid in msg.return_ids:
                self.node._tasks.remove(item)
                if type(msg.args) is Location:
                    self.node._unpins.append(msg.task_id)  # its arguments were never read
                error = TaskCancelledError(f"{msg.name} was cancelled.")
                self.node.send_result(msg.task_id, [serialize_failure(RemoteFailure(error))] * len(msg.return_ids))
                return

    def terminate(self, _) -> None:
        self._die(f"The actor {self.spec.cls.name} ended: every handle to it was gone.")

    def _die(self, cause: str) -> None:
        if self.cause:
            return
        self.cause = cause
        self.instance = None
        self.node.send(m.ACTOR_DIED, tuple(m.ActorDied(self.spec.actor_id, cause)))


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
        self.node.send(m.ACTOR_DIED, tuple(m.ActorDied(actor.spec.actor_id, actor.cause)))

    def actor_crashed(self, actor: ActorHost, spec, reason: str) -> None:
        self.node.exit_process(1)  # the node sees the process die and restarts the actor as after any crash


# --------------------------------------------------------------------------- the runtime's backend


class WorkerBackend(Backend):
    """The backend of the runtime inside a worker: every port call goes to the driver."""

    name = "worker"

    def start(self) -> None:
        node = self.config.options["node"]
        self.node_id = node.setup["node_id"]
        self.scheduler = RemoteScheduler(node)
        self.object_store = RemoteStore(node)
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
    if setup.get("forward_output"):
        node.capture_output()
    signal.signal(signal.SIGINT, node._on_sigint)
    loop.takeover = node.main
    sys.stdout.flush()
