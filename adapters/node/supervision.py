"""The node's supervision of its worker processes (and of the drivers and nodes connected to it, served
as workers are): starting them, sending to them, reading what they send (one handler per message tag),
and settling what each held when it goes."""

from __future__ import annotations

import logging
import os
import pickle
import shutil

from anyray.exceptions import WorkerCrashedError
from anyray.object_ref import ObjectRef
from anyray.runtime_env_setup import KEY as ENV_KEY

from . import messages as m
from .env_builds import PythonEnvs
from .framing import run_entry
from .pool import WorkerPool
from .reading import read_any_here

log = logging.getLogger(__name__)


class Worker:
    """The node's view of one worker process."""

    __slots__ = ("handle", "functions", "task", "actor", "borrowed", "handles", "pins", "grants", "calls",
                 "blocked", "retiring", "dead", "remote", "job", "peer", "env_key", "watches")

    def __init__(self, handle, job: tuple):
        self.handle = handle
        self.functions: set[bytes] = set()
        self.task = None
        self.actor = None
        self.borrowed: dict[bytes, ObjectRef] = {}      # refs the worker holds, kept alive here
        self.handles: dict = {}                         # actor handles it holds
        self.pins: dict[bytes, list] = {}               # key -> [ArenaObject, count] it may read
        self.grants: set[int] = set()                   # arena ranges granted, not yet sealed
        self.calls: dict[bytes, int] = {}               # tasks run per function (max_calls)
        self.blocked: set[int] = set()                  # its requests waiting with CPUs lent
        self.retiring = False
        self.dead = False
        self.remote = False  # a client on another machine: objects travel inline
        self.job = job       # the job of what it runs now (of a client: its own)
        self.peer = False    # another node of a cluster, as a client of this one
        self.env_key = ""    # the runtime_env it was started for ("" for none): it runs only work of that one
        self.watches = None  # the ready indexes of its wait loops, by key (wait_watches.py)


class Supervision:
    """``lock``: the node's lock; ``ledger``: what workers hold; ``seams``: where records and output go.
    The parts that handle what workers send are connected after they exist (``connect``)."""

    def __init__(self, session, setup: dict, lock, ledger, seams, job: tuple):
        self._setup = setup
        self._lock = lock
        self._ledger = ledger
        self._seams = seams
        self.count_records = None  # count(records): the node's metrics count finished and failed tasks
        self._job = job
        self.workers: dict[int, Worker] = {}
        self.idle: list[Worker] = []  # workers with nothing to run (a task's lease went back)
        self.closed = False
        self._tags: dict = {}
        self._task_result = self._call_result = self._actor_exited = self._worker_lost = None
        self.client_gone = None  # client_gone(worker): a driver's connection closed (a cluster node's leases)
        self.python_envs = PythonEnvs()
        self._max_idle = max(2, os.cpu_count() or 1)  # idle workers of other runtime_envs kept
        # Where this node's workers unpack runtime_env packages (working_dir, py_modules), per content hash:
        # inside the session's 0700 directory, so no other user reads them, and they go with the session.
        self.resources_dir = os.path.join(session.path, "runtime_resources")
        self.pool = WorkerPool(session, on_message=self._on_message, on_exit=self._on_exit)

    def connect(self, *, task_result, call_result, on_request, actor_died, actor_exited, worker_lost) -> None:
        """What handles each message a worker sends, and a worker's exit (with or without an actor)."""
        self._task_result, self._call_result = task_result, call_result
        self._actor_exited, self._worker_lost = actor_exited, worker_lost
        self._tags = {m.RESULT: self._on_result, m.REQUEST: on_request,
                      m.OUTPUT: lambda worker, body: self._seams.output_sink.add(worker, body),
                      m.ACTOR_DIED: actor_died}

    def spawn(self, env: dict | None = None, runtime_env: dict | None = None, python: str | None = None) -> Worker:
        """A new worker process (forked in a few milliseconds), installing this node's setup; with a
        ``runtime_env``, the worker sets it up before its first task and runs only work of that one.
        ``python``: the interpreter it runs in (a pip/uv environment's), None for the node's own."""
        handle = self.pool.start_worker(env, python=python)
        worker = Worker(handle, self._job)
        self.workers[handle.worker_id] = worker
        installing = handle.call_async(run_entry, "anyray.adapters.node.worker_main", "install", self._setup)
        installing.add_done_callback(self._installed)
        if runtime_env:
            worker.env_key = runtime_env[ENV_KEY]
            handle.call_async(run_entry, "anyray.adapters.node.worker_env", "prepare", runtime_env,
                              self.resources_dir).add_done_callback(self._installed)
        return worker

    def spawn_for(self, env: dict | None, runtime_env: dict | None, on_built) -> Worker | None:
        """A new worker for ``runtime_env`` (an actor's); None while its Python environment is built, and then
        ``on_built(interpreter or RuntimeEnvSetupError)`` is called (from the build's thread)."""
        known, python = self.python_envs.python_for(runtime_env, on_built)
        return self.spawn(env, runtime_env, python) if known else None

    def worker_for(self, options: dict, on_built) -> Worker | None:
        """Under the node's lock: an idle worker of the runtime_env in ``options``, or a new one; None while
        its Python environment (pip/uv) is built, and then ``on_built(interpreter or RuntimeEnvSetupError)``
        is called (from the build's thread). Idle workers of other environments beyond the node's share are
        asked to exit, so environments can take turns."""
        runtime_env = options.get("runtime_env")
        key = runtime_env[ENV_KEY] if runtime_env else ""
        idle = self.idle
        for i in range(len(idle) - 1, -1, -1):
            if idle[i].env_key == key:
                return idle.pop(i)
        known, python = self.python_envs.python_for(runtime_env, on_built) if key else (True, None)
        if not known:
            return None
        others = [w for w in idle if w.env_key != key]
        for worker in others[:max(0, len(others) - self._max_idle)]:
            idle.remove(worker)
            worker.retiring = True
            self.exit(worker)
        return self.spawn(None, runtime_env, python)

    @staticmethod
    def _installed(future) -> None:
        exc = future.exception()
        if exc is not None and not isinstance(exc, WorkerCrashedError):
            log.warning("a worker failed to start: %r", exc)

    @staticmethod
    def send(worker: Worker, tag: int, body) -> bool:
        try:
            worker.handle.send(tag, m.dumps(body))
            return True
        except WorkerCrashedError:
            return False  # its exit is handled by _on_exit

    @staticmethod
    def exit(worker: Worker) -> None:
        try:
            worker.handle.send(m.EXIT)
        except WorkerCrashedError:
            pass

    def add_client(self, handle, shared: bool, job: tuple, peer: bool = False) -> None:
        """Serve a driver's connection (``WorkerPool.adopt``) as a worker's: the same requests, and what
        it holds is released when it goes. ``shared``: it maps this node's shared memory; ``job``: its
        job id and namespace, which the tasks and actors it starts (and theirs) run in."""
        worker = Worker(handle, job)
        worker.remote = not shared
        worker.peer = peer
        self.workers[handle.worker_id] = worker

    def _on_message(self, handle, tag: int, payload) -> None:
        worker = self.workers.get(handle.worker_id)
        if worker is None or self.closed:
            return
        envelope = m.Envelope._make(pickle.loads(payload))
        if envelope.refs is not None:
            self._ledger.apply_refs(worker, envelope.refs)
        handler = self._tags.get(tag)
        if handler is not None:
            handler(worker, envelope.body)

    def _on_result(self, worker: Worker, body) -> None:
        result = m.Result._make(body)
        if result.records:
            self._seams.record_sink.add(worker, result.records)
            if self.count_records is not None:
                self.count_records(result.records)
        if worker.actor is not None:
            self._call_result(worker.actor, worker, result.task_id, result.wires, result.contained)
        else:
            self._task_result(worker, result.task_id, result.wires, result.contained)

    def _on_exit(self, handle) -> None:
        worker = self.workers.pop(handle.worker_id, None)
        if worker is None or self.closed:
            return
        with self._lock:
            worker.dead = True
            if worker in self.idle:
                self.idle.remove(worker)
            task, worker.task = worker.task, None
            pins, worker.pins = worker.pins, {}
            grants, worker.grants = worker.grants, set()
        self._ledger.release(worker, pins, grants)
        if handle.adopted and self.client_gone is not None:
            self.client_gone(worker)
        if worker.actor is not None:
            self._actor_exited(worker.actor, worker)
            return
        if task is not None:
            self._worker_lost(task, handle)

    def read_here(self, done, timeout: float | None, wake_fd: int) -> None:
        """The calling thread waits for results from any worker: it reads them itself until ``done()``
        (``reading.read_any_here``); the store's ``read_here``."""
        read_any_here([w.handle for w in list(self.workers.values()) if not w.handle.adopted], done, timeout,
                      wake_fd)

    def close(self) -> None:
        self.closed = True
        self.pool.close()
        shutil.rmtree(self.resources_dir, ignore_errors=True)
