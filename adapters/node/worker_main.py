"""A node's worker process: runs tasks and hosts an actor, and gives user code a full anyray runtime.

``install(setup)`` turns a bare worker (``worker_loop.worker_main``) into a
node worker: the reader moves to a thread of its own and the main thread
runs tasks, so a task's ``cancel`` can interrupt it with SIGINT even in a
blocking call (``worker_interrupts``). User code inside a task sees an
ordinary ``Runtime`` whose backend forwards every port call to the node
(``remote_ports``): nested tasks, actors, ``get``/``put``/``wait`` all work.
The hosted actor is ``worker_actor``'s, what tasks print ``worker_output``'s.

References held here are borrowed from the node (see ``messages``): this
process's counters report each id's first reference and its last, and the
views of shared memory report when they are gone, so the node keeps what
this worker can still read.

Only worker processes import this module and the ``worker_*`` ones; the node
reaches ``install`` by name (``framing.run_entry``).
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import signal
import sys
import threading
import time

import cloudpickle

from anyray import serialization
from anyray.context import TaskContext
from anyray.exceptions import TaskCancelledError, TaskError
from anyray.executor import Call, failure_for, serialize_failure
from anyray.object_ref import ObjectRef
from anyray.ports.backend import Backend, BackendConfig, Capability
from anyray.runtime import Runtime, set_current
from anyray.serialization import SerializedObject
from anyray.specs import RemoteFailure

from . import messages as m
from . import metrics_link, worker_env
from .arena import Location
from .framing import spin_until_readable
from .link import FLUSH_INTERVAL, Link
from .remote_groups import GroupsRemoteScheduler
from .remote_ports import RemoteScheduler, RemoteStore
from .store import to_wire
from .worker_actor import ActorMessages, stream_spec
from .worker_interrupts import TaskInterrupts
from .worker_loop import WorkerLoop, current_loop
from .worker_output import ForwardedEvents, Output
from .worker_prefix import mark_streams

log = logging.getLogger(__name__)


class WorkerNode(Link):
    """Everything of one worker process: its link to the node, its runtime, the task it runs or the
    actor it hosts."""

    def __init__(self, loop: WorkerLoop, setup: dict):
        super().__init__(loop.conn, setup)
        self.loop = loop
        self._tasks: collections.deque = collections.deque()  # (run, arg) for the main thread, in order
        self._exit = False
        self.events = ForwardedEvents()
        self.output = Output(self)
        self.actor = None   # a threaded or async actor hosted here (an ActorHost)
        self.inline = None  # a sync actor whose calls run on the main thread (a worker_actor.InlineActor)
        self.direct = None  # its socket for calls straight from drivers (a worker_direct.DirectServer)
        self._unloaded: dict[bytes, bytes] = {}  # function id -> code the node sent, not loaded yet
        self.interrupts = TaskInterrupts(self)
        self.actors = ActorMessages(self)
        # What the node sends, by tag; a TASK waits for the main thread.
        self.handlers = {m.RESPONSE: self._on_response, m.TASK: self._queue_task, m.ACTOR: self.actors.on_message,
                         m.CANCEL: self.interrupts.on_cancel, m.EXIT: self._on_exit, m.CALL: loop._call}
        config = BackendConfig(num_cpus=None, namespace=setup["namespace"], job_id=setup["job_id"],
                               options={"node": self})
        self.runtime = Runtime(WorkerBackend, config, counters=self.counters())
        set_current(self.runtime)

    def function(self, fn_id: bytes, blob: bytes | None):
        fn = self._functions.get(fn_id)
        if fn is None:
            fn = self._functions[fn_id] = cloudpickle.loads(blob if blob is not None else self._unloaded[fn_id])
            self._unloaded.pop(fn_id, None)
            self.exported.add(fn_id)
        return fn

    # -- reading ------------------------------------------------------------------
    def main(self) -> None:
        """The main thread: read the connection, run each task here as it comes, until the node goes."""
        threading.Thread(target=self._flush_loop, name="anyray-worker-flush", daemon=True).start()
        conn, tasks, fd = self.conn, self._tasks, self._fd
        while not self._exit:
            try:
                if tasks:
                    if self.inline is not None:
                        self.read_arrived()  # read what has arrived first: a cancel of a queued call
                        if not tasks:
                            continue
                    elif self.direct is not None:
                        self.direct.drain()  # a leased worker: the driver's socket never fills while tasks run
                    run, arg = tasks.popleft()
                    run(arg)
                    del run, arg
                    continue
                with self._read_lock:
                    if tasks:
                        continue
                    if self.direct is not None:  # the node's connection and the drivers' direct sockets
                        msg = self.direct.wait(conn)
                        if msg is None:
                            continue
                    else:
                        spin_until_readable(fd)  # the next task often follows the last result closely
                        msg = conn.recv_bytes()
                self._dispatch(msg)
            except (KeyboardInterrupt, TaskCancelledError):
                pass  # a cancel that landed between tasks
            except (EOFError, OSError):
                return  # the node is gone
            except Exception:  # noqa: BLE001 - one bad message must not end the worker
                log.exception("a worker could not handle a message")
        try:  # told to exit (retired, or the node shuts down): the user metrics of the last second go too
            metrics_link.ship(self, force=True)
        except OSError:
            pass

    def _dispatch(self, msg: bytes) -> None:
        """Handle one message, on whichever thread read it; a task is queued for the main thread."""
        handler = self.handlers.get(msg[0])
        if handler is None:
            log.error("a worker got a message it has no handler for (tag %s)", msg[0])
            return
        handler(memoryview(msg)[1:])

    def read_arrived(self) -> None:
        """Handle what has arrived, unless another thread reads the connection now."""
        if self._read_lock.acquire(False):
            try:
                if self.direct is not None:  # direct calls that came go ahead of the node's next message
                    self.direct.drain()
                conn = self.conn
                while conn.poll(0):
                    self._dispatch(conn.recv_bytes())
            finally:
                self._read_lock.release()

    def _queue_task(self, payload) -> None:
        self._tasks.append((self._run_task, payload))

    def _on_exit(self, _) -> None:
        self._exit = True

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            try:
                if self.output.lines:
                    self.output.send()
            except (OSError, ConnectionError):
                return
            if not self._flush_once():
                return

    # -- tasks ------------------------------------------------------------------
    def _run_task(self, payload) -> None:
        try:
            task = m.Task._make(pickle.loads(payload))
        except Exception as exc:  # noqa: BLE001 - the task's caller gets the error, whatever it is
            error = TaskError.from_exception("the task", exc, os.getpid())
            self.send(m.RESULT, m.Result.pack(None, [to_wire(serialize_failure(RemoteFailure(error)))], [None], []))
            return  # None: the task this worker was sent (the node knows which)
        self._run(task, self.send_result)

    def run_direct_task(self, item) -> None:
        """A task a driver sent straight here on its lease of this worker (``worker_direct``): its result
        goes back the same way."""
        conn, msg = item
        t = m.DirectTask._make(pickle.loads(memoryview(msg)[1:]))
        task = m.Task(t.task_id, t.fn_id, t.blob, t.args, t.dep_ids, t.deps, t.return_ids, t.name, t.resources, [],
                      t.retry_exceptions, t.max_retries, t.job, None, None)
        direct = self.direct
        self._run(task, lambda task_id, outputs: direct.reply(conn, task_id, task.return_ids, outputs))

    def _run(self, task: m.Task, send_result) -> None:
        if task.job is not None:  # a task of another driver's job than the last one (a cluster node)
            self.runtime.job_id, self.runtime.namespace = task.job
        task_id, dep_wires, return_ids, name = task.task_id, task.deps, task.return_ids, task.name
        if task.blob is not None:  # kept until loaded: the node sends a function's code to a worker once,
            self._unloaded[task.fn_id] = task.blob  # and a cancel may end this task before it is loaded
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

        interrupts = self.interrupts
        interrupts.current, interrupts.cancel = task_id, False
        interrupts.running = True
        try:
            self.before_start(task_id)
            worker_env.ensure(self)
            fn = self.function(task.fn_id, task.blob)
            unread.discard(task_id)
            args = self.from_wire(task_id, task.args)
            gpu_ids = task.gpu_ids
            if gpu_ids:
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
            ctx = TaskContext(task_id=task_id, name=name, resources=task.resources, gpu_ids=gpu_ids,
                              placement=task.placement)
            stream = task.stream
            call = Call(fn, name, "task", ctx, len(return_ids), self.events, task.retry_exceptions, task.max_retries,
                        stream=None if stream is None else stream_spec(return_ids, stream))
            deps = [ObjectRef(oid) for oid in task.dep_ids]
            outputs = call.run(args, deps, fetch)
            interrupts.running = False
            del args, deps, call
        except BaseException as exc:  # noqa: BLE001 - a cancel can land outside the user's code
            interrupts.running = False
            if isinstance(exc, SystemExit):  # as in Ray: the worker exits, and the task is retried or
                self.exit_process(exc.code)  # fails with WorkerCrashedError
            if isinstance(exc, KeyboardInterrupt):
                exc = TaskCancelledError(f"{name} was interrupted.")
            outputs = [serialize_failure(failure_for(exc, name))] * len(return_ids)  # e.g. its code failed to load
        interrupts.current, interrupts.cancel = None, False
        self._unpins.extend(unread)
        self.runtime.counter.drain()  # refs the task dropped cancel out before the result goes
        send_result(task_id, outputs)

    def before_start(self, task_id: bytes) -> None:
        """Raise ``KeyboardInterrupt`` if the task's cancel came before it started here.

        The node sends CANCEL, then SIGINT. A SIGINT that lands before the task runs finds nothing to
        interrupt, and then nobody reads the connection while the task runs: so read what has arrived
        now (with SIGINT held off, as in a request), and look for a cancel read before the task was
        current (by another thread)."""
        interrupts = self.interrupts
        if task_id in interrupts.early:  # read by another thread before the task was current
            interrupts.early.remove(task_id)
            raise KeyboardInterrupt("The task was cancelled.")
        interrupts.pumping = True
        try:
            self.read_arrived()
        finally:
            interrupts.pumping = False
            interrupts.held = False  # its CANCEL, if it was for this task, is in interrupts.cancel now
        if interrupts.cancel:
            interrupts.cancel = False
            raise KeyboardInterrupt("The task was cancelled.")

    def send_result(self, task_id: bytes, outputs: list[SerializedObject]) -> None:
        output = self.output
        output.flush_streams()
        if output.lines:
            output.send()  # what the task printed reaches its driver before its result
        wires, contained = [], []
        for obj in outputs:
            try:
                wires.append(self.to_node(obj))
            except Exception as exc:  # noqa: BLE001 - the store is full, say: the result is that error
                wires.append(to_wire(serialize_failure(RemoteFailure(exc))))
            contained.append(m.contained_ids(obj.contained_refs) if obj.contained_refs else None)
        self.send(m.RESULT, m.Result.pack(task_id, wires, contained, self.events.take()))

    def exit_process(self, code) -> None:
        """End this worker process as ``sys.exit(code)`` in a task asks, once what it printed is sent:
        the node handles it as any worker that died (retries, actor restarts)."""
        try:
            self.output.flush_streams()
            if self.output.lines:
                self.output.send()
            metrics_link.ship(self, force=True)
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - exiting regardless
            pass
        os._exit(code if type(code) is int and 0 < code < 256 else 1)

    def fetch(self, refs) -> list:
        """Values of ``refs`` (failures left as values), asked from the node."""
        return [serialization.deserialize(o) for o in self.get([r._id for r in refs], None)]


# --------------------------------------------------------------------------- the runtime's backend


class WorkerBackend(Backend):
    """The backend of the runtime inside a worker: every port call goes to the node."""

    name = "worker"
    capabilities = frozenset({Capability.RUNTIME_ENV, Capability.RUNTIME_ENV_PIP})  # as the node it serves

    def start(self) -> None:
        node = self.config.options["node"]
        self.node_id = node.setup["node_id"]
        self.scheduler = (GroupsRemoteScheduler if node.setup.get("places_groups") else RemoteScheduler)(node)
        self.object_store = RemoteStore(node)
        self.metadata = None

    def shutdown(self) -> None:
        pass

    def info(self) -> dict:
        return {"address": None, "node_id": self.node_id, "dashboard_url": None}


def open_direct() -> tuple | None:
    """Run in a worker the node lends to drivers (a CALL): open its sockets for their tasks; (its Unix
    socket's path, its TCP address or None), or None if they cannot be opened (the node then lends no more)."""
    node = _node
    if node.direct is None:
        from .worker_direct import DirectServer

        try:
            node.direct = DirectServer(node, node.setup["direct"])
        except (OSError, KeyError) as exc:
            print(f"anyray: a worker's socket for leased tasks could not be opened: {exc}", file=sys.stderr)
            return None
    return node.direct.path, node.direct.tcp


_node: WorkerNode | None = None


def install(setup: dict) -> None:
    """Run once in each new worker (a CALL from the node): become a node worker."""
    loop = current_loop()
    for path in reversed(setup["sys_path"]):  # the driver's modules import here as they do there
        if path not in sys.path:
            sys.path.insert(0, path)
    if setup["cwd"] != os.getcwd():
        try:
            os.chdir(setup["cwd"])
        except OSError:
            pass
    global _node
    node = _node = WorkerNode(loop, setup)
    forward = setup.get("forward_output")
    if forward:
        node.output.capture()
    # each line marked (task pid=N, ip=HOST) as Ray's, or dropped (log_to_driver=False)
    mark_streams(setup, None if forward else node.output)
    signal.signal(signal.SIGINT, node.interrupts.on_sigint)
    loop.takeover = node.main
    sys.stdout.flush()
