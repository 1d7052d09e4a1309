"""The node's scheduling parts put together with no processes, for unit tests: a real shared-memory store
over a real arena, a real resource pool and the node's real parts, with ``LoopbackWorkers`` in place of the
supervision of worker processes (it records what the parts send each worker)."""

from __future__ import annotations

import itertools
import pickle
import threading
import types

from anyray.adapters.common.names import NamedActors
from anyray.adapters.common.queues import ShapeQueues
from anyray.adapters.common.resources import ResourcePool
from anyray.adapters.metadata.memory import MemoryMetadataStore
from anyray.adapters.node import messages as m
from anyray.adapters.node.actors import Actors
from anyray.adapters.node.arena import Arena
from anyray.adapters.node.functions import FunctionTable
from anyray.adapters.node.handlers import Requests
from anyray.adapters.node.ledger import Ledger
from anyray.adapters.node.seams import Seams
from anyray.adapters.node.session import Session
from anyray.adapters.node.store import SharedObjectStore
from anyray.adapters.node.supervision import Worker
from anyray.adapters.node.tasks import Tasks
from anyray.serialization import deserialize

JOB = (b"driver-job", "namespace")


class LoopbackHandle:
    """A worker's handle with no process: a test ends it (``died``)."""

    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        self.pid = 4000 + worker_id
        self.alive = True
        self.exit = None
        self.killed = False
        self.answers: list = []  # the Response sent to it, each

    def send(self, tag: int, body: bytes | None = None) -> None:
        if tag == m.RESPONSE:
            self.answers.append(m.Response._make(pickle.loads(body)))

    def kill(self) -> None:
        self.killed = True

    def died(self, returncode: int) -> None:
        self.alive = False
        self.exit = types.SimpleNamespace(returncode=returncode)


class LoopbackWorkers:
    """What the node's parts use of its supervision (``spawn``, ``worker_for``, ``spawn_for``, ``send``, ``exit``,
    ``idle``); every message sent is kept in ``sent`` as ``(worker, tag, body)``."""

    def __init__(self, job: tuple):
        self._job = job
        self._ids = itertools.count(1)
        self.idle: list[Worker] = []
        self.spawned: list[Worker] = []
        self.sent: list[tuple] = []
        self.exited: list[Worker] = []

    def spawn(self, env: dict | None = None) -> Worker:
        worker = Worker(LoopbackHandle(next(self._ids)), self._job)
        self.spawned.append(worker)
        return worker

    def worker_for(self, options: dict, on_built) -> Worker:
        """An idle worker, else a new one (these tests run no runtime_env)."""
        return self.idle.pop() if self.idle else self.spawn()

    def spawn_for(self, env: dict | None, runtime_env: dict | None, on_built) -> Worker:
        return self.spawn(env)

    def send(self, worker: Worker, tag: int, body) -> bool:
        self.sent.append((worker, tag, body))
        return True

    def exit(self, worker: Worker) -> None:
        self.exited.append(worker)

    def of(self, tag: int) -> list[tuple]:
        """``(worker, body)`` of each message sent with ``tag``, the body as its type (``messages.TYPE_OF_TAG``)."""
        kind = m.TYPE_OF_TAG.get(tag)
        return [(worker, body if kind is None else kind._make(body)) for worker, t, body in self.sent if t == tag]


class NodeParts:
    """A node's tasks and actors parts over real objects; ``close`` removes its session directory."""

    def __init__(self, total: dict, gpu_ids: list | None = None):
        self.session = Session()
        self.arena = Arena.create(self.session, 16 << 20)
        self.store = SharedObjectStore(self.arena, inline_max=1024)
        self.pool = ResourcePool(total, gpu_ids or [])
        self.lock = threading.RLock()
        self.seams = Seams(self.pool)
        self.workers = LoopbackWorkers(JOB)
        self.ledger = Ledger(self.lock, self.store, self.seams)
        self.functions = FunctionTable()
        self.queues = ShapeQueues(self.lock, self.pool, None)
        self.tasks = Tasks(self.lock, self.store, self.pool, self.queues, self.ledger, self.functions, self.workers,
                           self.seams, JOB)
        self.queues.start_task = self.tasks.start
        self.actors = None
        self.names = NamedActors(MemoryMetadataStore(), lambda name, namespace: self.actors.get_named_actor(name,
                                                                                                        namespace))
        self.actors = Actors(self.lock, self.store, self.queues, self.names, self.ledger, self.functions,
                             self.workers, self.seams, JOB)
        self.ledger.handle_of = self.actors.handle_of
        self.requests = Requests(self.lock, self.pool, self.store, self.queues, self.ledger, self.functions,
                                 self.tasks, self.actors, self.names, self.seams, self._cancel)

    def _cancel(self, ref, force: bool, recursive: bool) -> None:
        if not self.tasks.cancel(ref, force, recursive):
            self.actors.cancel(ref)

    def request(self, worker, rid: int, op: str, args):
        """``worker`` sends request ``op``: the answers it got so far."""
        self.requests.on_request(worker, m.Request.pack(rid, op, args))
        return worker.handle.answers

    def value(self, ref):
        """The value sealed for ``ref`` (a failure as its ``RemoteFailure``)."""
        return deserialize(self.store.entry(ref._id))

    def close(self) -> None:
        self.store.close()
        self.arena.close()
        self.session.close()
