"""The node's side of task leases (``leases.py`` is the driver's): the node lends a driver on its machine
an idle worker and the resources one task of a shape takes; the driver sends that worker its tasks of
that shape straight on the worker's direct socket (``node/worker_direct.py``) and gives it back when idle.

The node still decides: it lends only when the resources are free and no work waits in its own queues
(work queued here goes first), and only workers with no runtime_env. A driver on this machine reaches the
worker on its Unix socket; one on another machine on its TCP address (a node without TLS: with TLS, such a
driver leases none, and its tasks take the node's path).
When it lends none and another node of the cluster has room now, it says so: the driver then sends its
tasks through the node, which forwards them there, rather than queueing them on the leases it holds.
While lent, the worker is neither idle nor running a node task: ``worker.task`` is the ``Hold``, so a
blocking ``get`` in a leased task lends its CPUs as any task's does (``handlers._lend``), and a worker
that dies gives its resources back (``Tasks.worker_lost`` hands it to ``Hold.lost``); the driver sees its
socket close and sends the tasks it had there through the node (with their retries).

"lease_worker" (``LeaseAsk``) answers a ``LeaseAnswer`` (lease id 0: none now); "lease_return" and
"lease_cancel" (``LeaseEnd``) give a lease back, and interrupt (or kill, ``force``) its worker's task.
A driver that goes gives back every lease it held.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
from time import monotonic
from types import SimpleNamespace

from anyray.policy import fits

from ..node import messages as m
from ..node.framing import run_entry
from ..node.handlers import LATER
from .direct_host import respond

log = logging.getLogger(__name__)

NONE = m.LeaseAnswer.pack(0, None, None, False)
ELSEWHERE = m.LeaseAnswer.pack(0, None, None, True)  # none here, but another node has room: the driver sends
# its tasks through this node, which forwards them there (Ray's raylet answers a lease request with
# another node to ask, its spillback)
# What the node's memory monitor reads of what a worker runs (a leased worker's task is retried by its driver)
_LEASED = SimpleNamespace(parent_task_id=None, options={"max_retries": 3}, name="a leased worker's task",
                          task_id=b"")


class Hold:
    """One lease: the resources (``lease``), the worker, the driver it is lent to."""

    __slots__ = ("lease_id", "lease", "worker", "client", "ended", "_host")
    spec = _LEASED

    def __init__(self, host, lease_id: int, lease, worker, client):
        self._host, self.lease_id, self.lease, self.worker, self.client = host, lease_id, lease, worker, client
        self.ended = False

    def lost(self, _handle) -> None:
        """Its worker died (``Tasks.worker_lost``): the resources go back; the driver retries its tasks."""
        self._host.end(self, idle=False)


class LeaseHost:
    """``tasks``: the node's tasks part (``release`` gives resources back and starts queued work)."""

    def __init__(self, lock, pool, queues: dict, tasks, supervision, setup: dict, placement=None):
        self._lock = lock
        self._placement = placement  # its ``view``: the other nodes' free resources (None: one node)
        self._pool = pool
        self._queues = queues
        self._tasks = tasks
        self._release = tasks.release
        self._supervision = supervision
        self._setup = setup
        self._ids = itertools.count(1)
        self._holds: dict[int, Hold] = {}
        self._paths: dict[int, str] = {}  # worker id -> its direct socket, once opened
        supervision.client_gone = self._client_gone

    def register(self, register) -> None:
        register("lease_worker", self._op_lease)
        register("lease_return", self._op_return)
        register("lease_cancel", self._op_cancel)

    def _op_lease(self, client, rid: int, args):
        asked = monotonic()
        ask = m.LeaseAsk._make(args)
        direct = self._setup.get("direct")
        if client.peer or not direct or (client.remote and not direct.get("tcp")):
            return NONE
        with self._lock:
            if any(self._queues.values()):  # work queued here goes first
                return self._none(ask.resources)
            lease = self._pool.acquire(ask.resources)
            if lease is None:
                return self._none(ask.resources)
            worker = self._supervision.worker_for({}, None)
            worker.job = client.job  # what its tasks submit runs in the driver's job (the node's tasks say so again)
            hold = Hold(self, next(self._ids), lease, worker, client)
            worker.task = hold
            self._holds[hold.lease_id] = hold
            paths = self._paths.get(worker.handle.worker_id)
            latency = self._tasks.latency  # the node's scheduling latency (/metrics): a lease is a placement,
            if latency is not None:        # as Ray's placement time is per lease, not per task on it
                latency.observe(monotonic() - asked)
        if paths is not None:
            return m.LeaseAnswer.pack(hold.lease_id, paths[client.remote], worker.handle.pid, False)
        try:
            opening = worker.handle.call_async(run_entry, "anyray.adapters.node.worker_main", "open_direct")
        except Exception:  # noqa: BLE001 - the worker died already: its exit ends the hold
            self.end(hold, idle=False)
            return NONE
        opening.add_done_callback(lambda future: self._opened(hold, rid, future))
        return LATER

    def _none(self, demand: dict):
        """No lease: ``ELSEWHERE`` when another node has ``demand`` free now, else ``NONE``."""
        view = getattr(self._placement, "view", None)
        if view is not None and any(fits(demand, free) for free in view.free().values()):
            return ELSEWHERE
        return NONE

    def _opened(self, hold: Hold, rid: int, future) -> None:
        """The worker opened its direct sockets (or could not): answer the driver."""
        paths = None if future.exception() is not None else future.result()  # (Unix path, TCP address)
        worker = hold.worker
        path = paths[hold.client.remote] if paths is not None else None
        if path is None or hold.ended:
            self.end(hold, idle=paths is not None)
            answer = NONE
        else:
            self._paths[worker.handle.worker_id] = tuple(paths)
            answer = m.LeaseAnswer.pack(hold.lease_id, path, worker.handle.pid, False)
        respond(hold.client, rid, answer)

    def _op_return(self, client, rid: int, args):
        end = m.LeaseEnd._make(args)
        hold = self._holds.get(end.lease_id)
        if hold is not None and hold.client is client:
            self.end(hold, idle=True)

    def _op_cancel(self, client, rid: int, args):
        end = m.LeaseEnd._make(args)
        hold = self._holds.get(end.lease_id)
        if hold is None or hold.client is not client or hold.ended:
            return
        if end.recursive:  # what the task submitted went through the node
            for child in list(self._tasks.children.get(end.task_id, ())):
                self._tasks.cancel_task(child, end.force, True)
        handle = hold.worker.handle
        if end.force:
            hold.worker.retiring = True
            handle.kill()
            return
        if self._supervision.send(hold.worker, m.CANCEL, end.task_id) and handle.pid and handle.alive:
            try:  # the message says which task; the signal interrupts it even in user code or sleep()
                os.kill(handle.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def end(self, hold: Hold, idle: bool) -> None:
        """Give ``hold``'s resources back; its worker goes idle (``idle``) or is gone."""
        worker = hold.worker
        with self._lock:
            if hold.ended:
                return
            hold.ended = True
            self._holds.pop(hold.lease_id, None)
            worker.job = None  # unknown: the node's next task says its job again
            if worker.task is hold:
                worker.task = None
            if not idle or worker.dead:
                self._paths.pop(worker.handle.worker_id, None)
            elif worker.retiring:
                self._paths.pop(worker.handle.worker_id, None)
                idle = False
            else:
                self._supervision.idle.append(worker)
        if not idle and not worker.dead and worker.retiring:
            self._supervision.exit(worker)
        self._release(hold.lease)

    def _client_gone(self, client) -> None:
        """A driver went: the workers it held are idle again (or end, if busy: they ran its tasks)."""
        for hold in [h for h in list(self._holds.values()) if h.client is client]:
            hold.worker.retiring = True  # it may still run that driver's task: it goes
            self.end(hold, idle=False)
