"""A cluster node's scheduler: the node's own scheduler, plus handing work to other nodes and pulling
their objects.

Placement. A task runs here when its resources are free here; otherwise, or
when no node here could ever hold it, it goes to another node that has them
free (spillback), by the resource view every node publishes with its
heartbeat (``ClusterView``). That view is up to a heartbeat old, so each node
also counts what it has handed to each other node since, and what came back.
A task handed on runs where it lands.

Objects. Every object has one home: where the task that made it was
submitted, or where it was put. A node that hands a task on keeps the task's
return ids alive on the other node (references borrowed, as a worker's are)
and reads the results home as soon as they are sealed. A node that gets a
reference to an object living elsewhere (a task's dependency, a reference
inside a value) records where it lives (``_remote``), keeps it alive there,
and pulls it when something here waits for it: inline when small, else in
chunks from the other node's object server straight into this node's
shared memory (``peers.Transfer``). It lets go once nothing here refers to
the object any more.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import hmac
import json
import logging
import pickle
import threading
import time

from anyray.actor import ActorHandle
from anyray.exceptions import ActorDiedError, ObjectLostError, WorkerCrashedError
from anyray.object_ref import ObjectRef
from anyray.policy import allows_another, fits
from anyray.runtime import current_counter
from anyray.serialization import SerializedObject
from anyray.specs import ActorSpec, TaskSpec

from ..node import protocol as p
from ..node.arena import Location
from ..node.scheduler import NodeScheduler, _Task, call_options
from ..node.store import to_wire
from .peers import NotSent, PeerLink, Transfer

log = logging.getLogger(__name__)

NODES = "nodes/"
DEAD = "dead/"  # node id -> JSON of its last record and how it ended, for `anyray status`
DEAD_SECONDS = 3600.0  # how long a dead node stays listed
ACTORS = "actors/"  # actor id (hex) -> signed pickle of {"node", "class_name", "methods"}: where each actor lives
LOOKUP_SECONDS = 30.0  # how long a call to an actor not yet published waits for its record
ASK_SECONDS = 10.0  # how long a question to every node waits for the answers
RECORDS_PER_JOB = 10_000  # task records kept per job until its driver reads them (timeline, error_info)
JOBS_KEPT = 64  # jobs whose records a node keeps; the longest unread go first
OUTPUT_PER_JOB = 100_000  # pieces of task output kept per job until its driver reads them


class _PerJob:
    """What a node keeps for each job until the job's driver reads it: a bounded deque per job, and a
    bounded number of jobs (the one unread longest goes first)."""

    def __init__(self, per_job: int):
        self._per_job = per_job
        self._jobs: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: bytes, items) -> None:
        with self._lock:
            kept = self._jobs.get(job)
            if kept is None:
                kept = self._jobs[job] = collections.deque(maxlen=self._per_job)
                while len(self._jobs) > JOBS_KEPT:
                    self._jobs.popitem(last=False)
            kept.extend(items)

    def take(self, job: bytes) -> list:
        with self._lock:
            kept = self._jobs.pop(job, None)
        return list(kept) if kept else []


class ClusterView:
    """The other nodes of the cluster: their published resources, and links to them, opened on first use."""

    def __init__(self, metadata, node_id: str, token: bytes, on_change, on_dead, on_self_lapsed=None):
        self.node_id = node_id
        self._metadata = metadata
        self._token = token
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self._mine: dict[str, dict] = {}       # demand in flight that I handed to each node
        self._at_record: dict[str, dict] = {}  # ... as it was when its last record arrived
        self._links: dict[str, PeerLink] = {}
        self._connecting: dict[str, threading.Lock] = {}
        self._on_change, self._on_dead, self._on_self_lapsed = on_change, on_dead, on_self_lapsed
        self.transfer = Transfer(token)
        self._watch = metadata.watch(NODES, self._changed)
        for key, value in metadata.scan(NODES):
            self._changed(key, value)

    def _changed(self, key: str, value: bytes | None) -> None:
        node_id = key[len(NODES):]
        if node_id == self.node_id:
            if value is None and self._on_self_lapsed is not None:
                self._on_self_lapsed()  # the others count this node dead: its work went elsewhere
            return
        if value is None:
            with self._lock:
                gone = self.records.pop(node_id, None)
                self._mine.pop(node_id, None)
                self._at_record.pop(node_id, None)
            if gone is not None:
                self.record_death(gone, "its lease lapsed")  # unless it said it stopped, first
                self._on_dead(node_id)
            return
        try:
            record = json.loads(value)
        except ValueError:
            return
        with self._lock:
            self.records[node_id] = record
            self._at_record[node_id] = dict(self._mine.get(node_id, {}))
        self._on_change()

    def record_death(self, record: dict, how: str) -> None:
        """List a node as dead for ``anyray status`` (the first node to say how it ended is kept)."""
        value = json.dumps({**record, "ended": how, "ended_at": time.time()}).encode()
        try:
            if self._metadata.compare_and_set(DEAD + record["node_id"], None, value):
                self._metadata.put(DEAD + record["node_id"], value, ttl=DEAD_SECONDS)
        except Exception:  # noqa: BLE001 - a listing only: the store may be down
            pass

    def _credit(self, node_id: str) -> dict:
        """What ``node_id`` has free, as far as this node can tell (under the lock)."""
        record = self.records[node_id]
        credit = dict(record["available"])
        for k, v in self._at_record.get(node_id, {}).items():
            credit[k] = credit.get(k, 0.0) + v
        for k, v in self._mine.get(node_id, {}).items():
            credit[k] = credit.get(k, 0.0) - v
        return credit

    def place(self, demand: dict) -> str | None:
        """Another node with ``demand`` free now, charged for it; None if none has."""
        with self._lock:
            best, best_cpus = None, -1.0
            for node_id in self.records:
                credit = self._credit(node_id)
                if fits(demand, credit) and credit.get("CPU", 0.0) > best_cpus:
                    best, best_cpus = node_id, credit.get("CPU", 0.0)
            if best is not None:
                mine = self._mine.setdefault(best, {})
                for k, v in demand.items():
                    mine[k] = mine.get(k, 0.0) + v
            return best

    def returned(self, node_id: str, demand: dict) -> None:
        """Work charged to ``node_id`` is done (or never went): take the charge back."""
        with self._lock:
            charged = self._mine.get(node_id)
            if charged is not None:
                for k, v in demand.items():
                    if k in charged:
                        charged[k] = charged[k] - v
        self._on_change()

    def feasible_elsewhere(self, demand: dict) -> bool:
        with self._lock:
            return any(fits(demand, r["resources"]) for r in self.records.values())

    def alive(self, node_id: str) -> bool:
        return node_id == self.node_id or node_id in self.records

    def address(self, node_id: str) -> str | None:
        record = self.records.get(node_id)
        return record["address"] if record else None

    def link(self, node_id: str) -> PeerLink:
        """The link to ``node_id``, connecting on first use; ``ConnectionError`` if it is gone."""
        link = self._links.get(node_id)
        if link is not None and not link.closed:
            return link
        with self._lock:
            gate = self._connecting.setdefault(node_id, threading.Lock())
        with gate:
            link = self._links.get(node_id)
            if link is not None and not link.closed:
                return link
            address = self.address(node_id)
            if address is None:
                raise ConnectionError(f"Node {node_id} is not (or no longer) part of the cluster.")
            link = PeerLink.connect(address, self._token, self._closed)
            self._links[node_id] = link
            return link

    def existing_link(self, node_id: str) -> PeerLink | None:
        link = self._links.get(node_id)
        return link if link is not None and not link.closed else None

    def _closed(self, link: PeerLink) -> None:
        if self._links.get(link.node_id) is link:
            self._links.pop(link.node_id, None)

    def seal_record(self, record: dict) -> bytes:
        """``record`` signed with the cluster token: only a node of the cluster can write one that
        ``open_record`` accepts, so a value changed by anyone else in the metadata store is never unpickled."""
        body = p.dumps(record)  # method options may hold classes of a driver's __main__
        return hmac.new(self._token, body, hashlib.sha256).digest() + body

    def open_record(self, value: bytes) -> dict | None:
        mac, body = value[:32], value[32:]
        if not hmac.compare_digest(mac, hmac.new(self._token, body, hashlib.sha256).digest()):
            log.warning("ignored an actor record in the metadata store that no node of this cluster signed")
            return None
        return pickle.loads(body)

    def totals(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.records.values()]

    def close(self) -> None:
        self._watch.cancel()
        for link in list(self._links.values()):
            link.close()
        self.transfer.close()


class ClusterScheduler(NodeScheduler):
    """``NodeScheduler`` with other nodes to hand work to (``attach`` a ``ClusterView``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cluster: ClusterView | None = None
        self._remote: dict[bytes, str] = {}       # object id -> the node it lives on, while referenced here
        self._pulling: set[bytes] = set()
        self._forwarded: dict[str, set] = {}      # node id -> tasks handed to it, not yet back
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="anyray-pull")
        self._store.on_free = self._freed
        self._actor_nodes: dict[bytes, str] = {}    # actors living on other nodes -> their node
        self._actor_info: dict[bytes, tuple] = {}   # ... -> (class name, method options)
        self._held_actors: set[bytes] = set()       # remote actors this node keeps alive (it has handles)
        self._lookups: dict[bytes, list] = {}       # actor id -> calls waiting for its record, in order
        self._placed_here: set[bytes] = set()       # actors another node handed here
        self._remote_calls: dict[bytes, str] = {}   # first return id of a call on another node -> that node
        self._created: dict[bytes, list] = {}       # actors this node created elsewhere: [spec, args, contained, job]
        self._restart_counts: dict[bytes, int] = {}  # restarts of an actor started here again after its node died
        self._records_of = _PerJob(RECORDS_PER_JOB)  # task records per job, until its driver reads them
        self._output_of = _PerJob(OUTPUT_PER_JOB)    # what its tasks printed, likewise

    def attach(self, cluster: ClusterView) -> None:
        self.cluster = cluster

    @property
    def node_id(self) -> str:
        return self._resources.node_id

    # -- placement -------------------------------------------------------------------------
    def _check_feasible(self, key, name, demand, shape=None) -> None:
        if self.cluster is not None and self._resources.infeasible(demand) and self.cluster.feasible_elsewhere(demand):
            return  # another node can hold it: it goes there (the driver warns when no node can)
        super()._check_feasible(key, name, demand, shape)

    def _fits_here_now(self, demand: dict) -> bool:
        return fits(demand, self._resources.available())

    def _ready(self, task: _Task) -> None:
        if self.cluster is not None and not task.spilled and task.state == "waiting":
            demand = task.spec.resources
            busy = self._queues.get(task.shape) or not self._fits_here_now(demand)
            if busy or self._resources.infeasible(demand):
                node_id = self.cluster.place(demand)
                if node_id is not None:
                    with self._lock:
                        taken = task.state == "waiting"
                        if taken:
                            task.state = "forwarded"
                    if not taken:  # cancelled meanwhile
                        self.cluster.returned(node_id, demand)
                        return
                    self._forward(task, node_id)
                    return
        super()._ready(task)

    def spill_queued(self) -> None:
        """Hand queued tasks to nodes that have room now (a node's view changed, or work came back)."""
        if self.cluster is None:
            return
        out = []
        with self._lock:
            for queue in self._queues.values():
                while queue:
                    head = queue[0]
                    if callable(head):
                        break
                    if head.state != "queued":
                        queue.popleft()
                        continue
                    if head.spilled:
                        break
                    node_id = self.cluster.place(head.spec.resources)
                    if node_id is None:
                        break
                    queue.popleft()
                    head.state = "forwarded"
                    out.append((head, node_id))
        for task, node_id in out:
            self._forward(task, node_id)

    def _forward(self, task: _Task, node_id: str) -> None:
        spec = task.spec
        try:
            link = self.cluster.link(node_id)
        except (OSError, PermissionError) as exc:
            log.warning("could not hand %s to node %s: %s; running it here", spec.name, node_id, exc)
            self.cluster.returned(node_id, spec.resources)
            with self._lock:
                task.state = "waiting"
            super()._ready(task)
            return
        task.node = node_id
        self._forwarded.setdefault(node_id, set()).add(task)
        fn = spec.function
        blob = None
        if fn.function_id not in link.functions:
            blob = self._blob(fn)
            link.functions.add(fn.function_id)
        if task.held is not None:
            args = self._copy_out(task.held)
            inner = task.held.contained_refs
        else:
            args = to_wire(spec.args)
            inner = spec.args.contained_refs
        contained = p.contained_ids(inner) if inner else []
        ids = [r._id for r in spec.deps] + [ident for kind, ident in contained if kind == p.OBJECT]
        where = {oid: self._remote.get(oid, self.node_id) for oid in ids}
        return_ids = [r._id for r in spec.returns]
        for oid in return_ids:  # the other node keeps the results until they are read home
            link.hold(oid)
        link.call("forward", (spec.task_id, fn.function_id, fn.name, blob, args, [r._id for r in spec.deps],
                              return_ids, spec.resources, spec.options, spec.parent_task_id, spec.name, contained,
                              task.job, where), self._ignore)
        link.call("get", (return_ids, False, False),
                  lambda ok, value: self._pool.submit(self._forwarded_back, task, node_id, link, ok, value))

    @staticmethod
    def _ignore(ok, value) -> None:
        if not ok:
            log.error("another node refused work: %r", value)

    def _forwarded_back(self, task: _Task, node_id: str, link: PeerLink, ok: bool, value) -> None:
        try:
            spec = task.spec
            self._forwarded.get(node_id, set()).discard(task)
            self.cluster.returned(node_id, spec.resources)
            if not ok:  # the node went away: run it again, elsewhere or here, while retries allow
                self._lost(task, node_id, value)
                return
            for oid, wire, contained in value:
                self._receive(node_id, link, oid, wire, contained)
            for ref in spec.returns:
                link.let_go(ref._id)
            with self._lock:
                self._finish(task)
        except Exception:  # noqa: BLE001 - never lose a task silently
            log.exception("taking back the results of %s from node %s failed", task.spec.name, node_id)
        self.spill_queued()

    def _lost(self, task: _Task, node_id: str, error) -> None:
        spec = task.spec
        retries = spec.options["max_retries"]
        with self._lock:
            if task.state != "forwarded":
                return
            retry = allows_another(retries, task.attempts)
            if retry:
                task.attempts += 1
                task.state = "waiting"
                task.node = None
        if retry:
            self._ready(task)
            return
        with self._lock:
            self._finish(task)
        self.fail(spec.returns, WorkerCrashedError(
            f"The node running {spec.name} ({node_id}) died: {error}. Raise max_retries to retry it more often."))

    def node_dead(self, node_id: str) -> None:
        """``node_id``'s lease lapsed: what it ran for this node runs again; what lived only there is lost."""
        link = self.cluster.existing_link(node_id) if self.cluster else None
        if link is not None:
            link.close()  # every answer still awaited from it fails now: tasks are retried, calls fail
        for task in list(self._forwarded.pop(node_id, ())):
            self._lost(task, node_id, "its lease lapsed")
        lost = [oid for oid, where in list(self._remote.items()) if where == node_id]
        for oid in lost:
            self._remote.pop(oid, None)
            self._pulling.discard(oid)
            self.fail([ObjectRef(oid)], ObjectLostError(
                f"Object {oid.hex()} was lost: the node that held it ({node_id}) died."))
        with self._lock:
            gone = [actor_id for actor_id, where in self._actor_nodes.items() if where == node_id]
            for actor_id in gone:
                del self._actor_nodes[actor_id]
                self._held_actors.discard(actor_id)
        for actor_id in gone:
            if actor_id in self._created:
                self._restart_elsewhere(actor_id, node_id)

    def _restart_elsewhere(self, actor_id: bytes, node_id: str) -> None:
        """An actor this node created on ``node_id``, which died: start it again where it fits, while its
        ``max_restarts`` allows; else record it dead, so calls from anywhere fail with the cause."""
        spec, args, contained, job, deps, _inner = self._created[actor_id]
        allowed = spec.options["max_restarts"]
        restarts = self._restart_counts.get(actor_id, 0)
        if not allows_another(allowed, restarts):
            del self._created[actor_id]
            cause = (f"The actor {spec.cls.name} died: its node ({node_id}) died"
                     f"{'' if not restarts else f' after {restarts} restarts'}.")
            self._metadata.put(ACTORS + actor_id.hex(), self.cluster.seal_record({"dead": cause}))
            self._release_name(spec)
            return
        self._restart_counts[actor_id] = restarts + 1
        if args is not None:
            data, buffers = args
            spec.args = SerializedObject(data, buffers, self._contained_of(contained))
        spec.deps = deps
        name, spec.options["name"] = spec.options["name"], None  # its name stays claimed under its id
        try:
            self.create_actor(spec, None, job)
        finally:
            spec.options["name"] = name

    def _contained_of(self, contained) -> list:
        counter = current_counter()
        return [ObjectRef(ident, None, counter) for kind, ident in contained or () if kind == p.OBJECT]

    def cancel(self, ref, force: bool, recursive: bool) -> None:
        node_id = self._remote_calls.get(ref._id)
        if node_id is not None:
            link = self.cluster.existing_link(node_id)
            if link is not None:
                link.call("cancel", (ref._id, force, recursive), self._ignore)
            return
        with self._lock:
            task = self._tasks.get(ref._id)
        if task is not None and task.state == "forwarded" and task.node is not None:
            link = self.cluster.existing_link(task.node)
            if link is not None:
                link.call("cancel", (ref._id, force, recursive), self._ignore)
                return
        super().cancel(ref, force, recursive)

    # -- objects of other nodes ------------------------------------------------------------
    def _expect(self, oid: bytes, node_id: str) -> None:
        """``oid`` lives on ``node_id``: keep it alive there while this node refers to it."""
        if node_id == self.node_id or self._store.entry(oid) is not None or oid in self._tasks:
            return
        with self._lock:
            if oid in self._remote:
                return
            self._remote[oid] = node_id
        try:
            link = self.cluster.link(node_id)
        except (OSError, PermissionError):
            return  # gone: a wait for it fails when the node's lease lapses
        link.hold(oid)
        link.flush()

    def _freed(self, ids) -> None:
        for oid in ids:
            with self._lock:  # ordered with _receive's check: a pull that lands later is not sealed
                node_id = self._remote.pop(oid, None)
            if node_id is not None and self.cluster is not None:
                link = self.cluster.existing_link(node_id)
                if link is not None:
                    link.let_go(oid)

    def fetch(self, ids) -> None:
        """Start pulling each of ``ids`` that lives on another node and is not here yet."""
        if not self._remote:
            return
        for oid in ids:
            node_id = self._remote.get(oid)
            if node_id is None or self._store.entry(oid) is not None:
                continue
            with self._lock:
                if oid in self._pulling:
                    continue
                self._pulling.add(oid)
            try:
                link = self.cluster.link(node_id)
            except (OSError, PermissionError):
                self._pulling.discard(oid)
                continue
            link.call("get", ([oid], False, False),
                      lambda ok, value, link=link, node_id=node_id, oid=oid:
                      self._pool.submit(self._pulled, node_id, link, oid, ok, value))

    def _pulled(self, node_id: str, link: PeerLink, oid: bytes, ok: bool, value) -> None:
        try:
            if ok:
                for key, wire, contained in value:
                    self._receive(node_id, link, key, wire, contained, pulled=True)
        except Exception:  # noqa: BLE001
            log.exception("receiving objects pulled from node %s failed", node_id)
        finally:
            self._pulling.discard(oid)

    def _receive(self, node_id: str, link: PeerLink, oid: bytes, wire, contained, pulled: bool = False) -> None:
        """Seal here an object read from ``node_id``: its references first, then its bytes. A ``pulled``
        object no longer referenced here (freed while it travelled) is dropped instead."""
        if pulled and oid not in self._remote:
            if type(wire) is Location:
                link.unpin(oid)
            return
        counter = current_counter()
        refs = []
        for kind, ident, where in contained or ():
            if kind == p.OBJECT:
                self._expect(ident, where or node_id)
                refs.append(ObjectRef(ident, None, counter))
        if type(wire) is not Location:
            self._seal_received(oid, wire, refs, pulled)
            return
        store = self._store
        try:
            grant = store.reserve(wire.nbytes)
        except Exception as exc:  # noqa: BLE001 - the store is full: the object cannot come here
            link.unpin(oid)
            self.fail([ObjectRef(oid)], exc)
            return
        try:
            source = link.setup.get("object_address") or link.address  # its --object-manager-port, if fixed
            self.cluster.transfer.pull(source, wire, store.arena.receive_view(grant.offset, wire.nbytes))
        except Exception as exc:  # noqa: BLE001
            store.forget_grant(grant.offset)
            link.unpin(oid)
            self.fail([ObjectRef(oid)], ObjectLostError(f"Object {oid.hex()} could not be read from node "
                                                        f"{node_id}: {exc}"))
            return
        link.unpin(oid)
        if not self._seal_received(oid, wire._replace(offset=grant.offset), refs, pulled):
            store.forget_grant(grant.offset)

    def _seal_received(self, oid: bytes, wire, refs, pulled: bool) -> bool:
        with self._lock:
            if pulled and oid not in self._remote:
                return False
            self._store.seal_wire(oid, wire, refs)
            return True

    # -- requests --------------------------------------------------------------------------------
    def submit_task(self, spec, held=None, job=None) -> None:
        if self._remote and spec.deps:
            self.fetch([r._id for r in spec.deps])
        super().submit_task(spec, held, job)

    def _op_get(self, worker, rid, args):
        self.fetch(args[0])
        return super()._op_get(worker, rid, args)

    def _op_wait(self, worker, rid, args):
        self.fetch(args[0])
        return super()._op_wait(worker, rid, args)

    def _answer(self, worker, ids) -> list:
        out = super()._answer(worker, ids)
        if not worker.peer:
            return out
        store = self._store
        answer = []
        for oid, wire in out:  # another node also learns where the references inside live
            inner = getattr(store.entry(oid), "contained_refs", None) or ()
            contained = [(kind, ident, self._remote.get(ident, self.node_id) if kind == p.OBJECT else None)
                         for kind, ident in p.contained_ids(inner)]
            answer.append((oid, wire, contained))
        return answer

    def _op_forward(self, worker, rid, args):
        """A task another node hands to this one: it runs here."""
        (task_id, fn_id, fn_name, blob, args_wire, dep_ids, return_ids, resources, options, parent, name,
         contained, job, where) = args
        for oid, node_id in where.items():
            self._expect(oid, node_id)
        try:
            call_args, held = self._args_from(worker, args_wire, contained)
            counter = current_counter()
            spec = TaskSpec(task_id=task_id, function=self._descriptor(worker, fn_id, fn_name, blob), args=call_args,
                            deps=[ObjectRef(i, None, counter) for i in dep_ids],
                            returns=[ObjectRef(i, None, counter) for i in return_ids], resources=resources,
                            options=options, parent_task_id=parent, name=name)
        except Exception as exc:  # noqa: BLE001 - the caller waits for the results: they are this error
            self.fail([ObjectRef(i) for i in return_ids], exc)
            return None
        task = _Task(spec, held, job)
        task.spilled = True
        if held is None:
            spec.args, task.held = self._own(spec.args)
        self.fetch(dep_ids)
        self._admit(task, self._tasks, self._children, self._store)
        return None

    # -- actors on any node ----------------------------------------------------------------------
    def create_actor(self, spec: ActorSpec, held=None, job=None):
        here = spec.actor_id in self._placed_here
        if self.cluster is not None and not here and spec.resources:
            demand = spec.resources
            if not self._fits_here_now(demand) or self._resources.infeasible(demand):
                node_id = self.cluster.place(demand)
                forwarded = self._forward_actor(spec, held, job or self._job, node_id) if node_id else False
                if forwarded is not False:
                    return None if forwarded is True else forwarded  # or get_if_exists' winner
        if here:  # its name was claimed where it was created
            name, spec.options["name"] = spec.options["name"], None
            try:
                super().create_actor(spec, held, job)
            finally:
                spec.options["name"] = name
        else:
            winner = super().create_actor(spec, held, job)
            if winner is not None:
                return winner
        if self.cluster is not None:
            self._metadata.put(ACTORS + spec.actor_id.hex(), self.cluster.seal_record(
                {"node": self.node_id, "class_name": spec.cls.name, "methods": spec.method_options}))
        return None

    def _forward_actor(self, spec: ActorSpec, held, job, node_id: str) -> bool | ActorHandle:
        try:
            link = self.cluster.link(node_id)
        except (OSError, PermissionError):
            self.cluster.returned(node_id, spec.resources)
            return False
        winner = self._claim_name(spec)  # here and now: a taken name fails at the caller's .remote()
        if winner is not None:
            if held is not None:
                self._store.drop(held)
            return winner
        cls = spec.cls
        blob = None
        if cls.function_id not in link.functions:
            blob = self._blob(cls)
            link.functions.add(cls.function_id)
        if held is not None:
            args, inner = self._copy_out(held), list(held.contained_refs)
            self._store.drop(held)  # its bytes travel inline; the references inside are kept below
        else:
            args = to_wire(spec.args) if spec.args is not None else None
            inner = list(spec.args.contained_refs) if spec.args is not None else []
        contained = p.contained_ids(inner) if inner else []
        with self._lock:
            self._actor_nodes[spec.actor_id] = node_id
            self._actor_info[spec.actor_id] = (cls.name, spec.method_options)
            self._held_actors.add(spec.actor_id)
            created = self._created.get(spec.actor_id)
            if created is None:  # kept to start it again if its node dies (max_restarts); the references
                # in its arguments stay alive here as long, so the other node can always read them
                self._created[spec.actor_id] = [spec, args, contained, job, list(spec.deps), inner]
        link._note("_handles", spec.actor_id, 1)  # alive there while handles to it exist here
        self._send_expect(link, [r._id for r in spec.deps] + [i for k, i in contained if k == p.OBJECT])
        link.call("create_actor_here", (
            spec.actor_id, cls.function_id, cls.name, blob, args, [r._id for r in spec.deps], spec.resources,
            spec.options, spec.namespace, spec.is_async, spec.method_options, contained, job,
            self._restart_counts.get(spec.actor_id, 0)), self._ignore)
        return True

    def _send_expect(self, link: PeerLink, ids) -> None:
        """Tell the node behind ``link`` where the objects ``ids`` live, ahead of work that reads them."""
        if ids:
            link.call("expect", {oid: self._remote.get(oid, self.node_id) for oid in ids}, self._ignore)

    def _op_expect(self, worker, rid, where):
        for oid, node_id in where.items():
            self._expect(oid, node_id)

    def _op_create_actor_here(self, worker, rid, args):
        *rest, job, restarts = args
        self._placed_here.add(rest[0])
        if restarts:
            self._restart_counts[rest[0]] = restarts
        worker.job, saved = job, worker.job
        try:
            return self._op_create_actor(worker, rid, tuple(rest))
        finally:
            worker.job = saved

    def _start_actor_process(self, actor) -> None:
        restarts = self._restart_counts.get(actor.spec.actor_id)
        if restarts and actor.restarts < restarts:  # started here again after its node died
            actor.restarts = restarts
        super()._start_actor_process(actor)

    def _actor_node(self, actor_id: bytes) -> str | None:
        """The node an actor that does not live here lives on (its record, read once), or None; raises
        ``ActorDiedError`` if its record says it is dead."""
        node_id = self._actor_nodes.get(actor_id)
        if node_id is not None or actor_id in self._actors:
            return node_id
        value = self._metadata.get(ACTORS + actor_id.hex())
        if value is None:
            return None
        record = self.cluster.open_record(value)
        if record is None:
            return None
        if record.get("dead"):
            raise ActorDiedError(record["dead"])
        if record["node"] == self.node_id or not self.cluster.alive(record["node"]):
            return None
        with self._lock:
            self._actor_nodes[actor_id] = record["node"]
            self._actor_info[actor_id] = (record["class_name"], record["methods"])
        return record["node"]

    def _handle_of(self, actor_id: bytes):
        handle = super()._handle_of(actor_id)
        if handle is not None or self.cluster is None:
            return handle
        node_id = self._actor_node(actor_id)
        if node_id is None:
            return None
        self._hold_actor(actor_id, node_id)
        name, methods = self._actor_info[actor_id]
        return ActorHandle(actor_id, name, methods)

    def _hold_actor(self, actor_id: bytes, node_id: str) -> None:
        with self._lock:
            if actor_id in self._held_actors:
                return
            self._held_actors.add(actor_id)
        try:
            link = self.cluster.link(node_id)
        except (OSError, PermissionError):
            return
        link._note("_handles", actor_id, 1)
        link.flush()

    def get_named_actor(self, name: str, namespace: str):
        handle = super().get_named_actor(name, namespace)
        if handle is not None or self.cluster is None:
            return handle
        actor_id = self._named_actor_id(name, namespace)
        return self._handle_of(actor_id) if actor_id is not None else None

    def actor_handles_gone(self, actor_id: bytes) -> None:
        node_id = self._actor_nodes.get(actor_id)
        if node_id is None:
            super().actor_handles_gone(actor_id)
            return
        with self._lock:
            if actor_id not in self._held_actors:
                return
            self._held_actors.discard(actor_id)
            self._created.pop(actor_id, None)  # it ends: nothing to start again
        link = self.cluster.existing_link(node_id)
        if link is not None:
            link._note("_handles", actor_id, -1)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        node_id = self._actor_node(actor_id) if self.cluster is not None else None
        if node_id is None:
            super().kill_actor(actor_id, no_restart)
            return
        try:
            self.cluster.link(node_id).call("kill", (actor_id, no_restart), self._ignore)
        except (OSError, PermissionError):
            pass

    def submit_actor_task(self, spec, held=None) -> None:
        if self.cluster is None or spec.actor_id in self._actors:
            super().submit_actor_task(spec, held)
            return
        with self._lock:
            waiting = self._lookups.get(spec.actor_id)
            if waiting is not None:  # calls keep their order behind the first one's lookup
                waiting.append((spec, held))
                return
            node_id = self._actor_nodes.get(spec.actor_id)
            if node_id is None:
                self._lookups[spec.actor_id] = [(spec, held)]
        if node_id is not None:
            self._forward_call(spec, held, node_id)
        else:
            self._start_lookup(spec.actor_id)

    def _start_lookup(self, actor_id: bytes) -> None:
        threading.Thread(target=self._look_up, args=(actor_id,), name="anyray-actor-lookup", daemon=True).start()

    def _resolve(self, actor_id: bytes, deadline: float):
        """Wait (until ``deadline``) for an actor's record to name a live node: ``(node id or None, error)``;
        ``(None, None)`` also when the actor lives here."""
        while time.monotonic() < deadline:
            if actor_id in self._actors:
                return None, None
            try:
                node_id = self._actor_node(actor_id)
            except ActorDiedError as exc:
                return None, exc
            if node_id is not None:
                return node_id, None
            time.sleep(0.05)
        return None, ActorDiedError(f"No actor with id {actor_id.hex()} lives in this cluster (it may have ended).")

    def _look_up(self, actor_id: bytes) -> None:
        """Send the calls queued for an actor whose node is unknown, in order, once its record names one.

        The calls are taken out in batches and sent without the scheduler's lock; calls made meanwhile
        queue behind them (the list stays registered until it is empty), so one caller's order holds."""
        deadline = time.monotonic() + LOOKUP_SECONDS
        node_id, error = self._resolve(actor_id, deadline)
        while True:
            with self._lock:
                queued = self._lookups.get(actor_id)
                if not queued:
                    self._lookups.pop(actor_id, None)
                    return
                batch, queued[:] = list(queued), []
            for i, (spec, held) in enumerate(batch):
                if node_id is not None:
                    if self._forward_call(spec, held, node_id, requeue=False):
                        continue
                    with self._lock:  # its node is gone: the rest waits for the record to move
                        self._lookups[actor_id][:0] = batch[i:]
                        if self._actor_nodes.get(actor_id) == node_id:
                            del self._actor_nodes[actor_id]
                    time.sleep(0.1)
                    node_id, error = self._resolve(actor_id, deadline)
                    break
                if actor_id in self._actors:
                    super().submit_actor_task(spec, held)
                    continue
                if held is not None:
                    self._store.drop(held)
                self.fail(spec.returns, error)

    def _forward_call(self, spec, held, node_id: str, requeue: bool = True) -> bool:
        """Send an actor call to the node the actor lives on; False if that node cannot be reached (the
        call is then queued for a lookup of where the actor is now, unless ``requeue`` is False)."""
        try:
            link = self.cluster.link(node_id)
        except (OSError, PermissionError):  # its node is gone: wait for the actor's record to say where it is now
            if not requeue:
                return False
            with self._lock:
                if self._actor_nodes.get(spec.actor_id) == node_id:
                    del self._actor_nodes[spec.actor_id]
                waiting = self._lookups.get(spec.actor_id)
                if waiting is not None:
                    waiting.append((spec, held))
                    return True
                self._lookups[spec.actor_id] = [(spec, held)]
            self._start_lookup(spec.actor_id)
            return True
        if held is not None:
            args, inner = self._copy_out(held), held.contained_refs
        else:
            args, inner = to_wire(spec.args), spec.args.contained_refs
        contained = p.contained_ids(inner) if inner else []
        self._send_expect(link, [r._id for r in spec.deps] + [i for k, i in contained if k == p.OBJECT])
        return_ids = [r._id for r in spec.returns]
        for oid in return_ids:
            link.hold(oid)
        if return_ids:
            self._remote_calls[return_ids[0]] = node_id
        link.call("actor_call", (spec.task_id, spec.actor_id, spec.method_name, args, [r._id for r in spec.deps],
                                 return_ids, spec.caller_id, spec.seq,
                                 call_options(spec.options),
                                 spec.name, contained), self._ignore)
        refs = list(spec.returns)  # kept alive here until the results are home
        link.call("get", (return_ids, False, False),
                  lambda ok, value: self._pool.submit(self._call_back, spec, refs, held, node_id, link, ok, value))
        return True

    def _call_back(self, spec, refs, held, node_id: str, link: PeerLink, ok: bool, value) -> None:
        try:
            if refs:
                self._remote_calls.pop(refs[0]._id, None)
            if not ok and isinstance(value, NotSent):  # it never left: send it where the actor is now
                for ref in refs:
                    link.let_go(ref._id)
                self._forward_call(spec, held, node_id)
                return
            if held is not None:
                self._store.drop(held)
            if not ok:
                self.fail(refs, ActorDiedError(f"The node of actor {spec.actor_id.hex()} ({node_id}) went away "
                                               f"while it ran {spec.name}: {value}"))
                return
            for oid, wire, contained in value:
                self._receive(node_id, link, oid, wire, contained)
            for ref in refs:
                link.let_go(ref._id)
        except Exception:  # noqa: BLE001
            log.exception("receiving the results of an actor call from node %s failed", node_id)

    # -- what every node knows ------------------------------------------------------------------
    def ask_every_node(self, op: str, args) -> list:
        """Ask every other node ``op(args)`` at once; the answers (lists) joined, within ``ASK_SECONDS``."""
        others = [r["node_id"] for r in self.cluster.totals()] if self.cluster is not None else []
        if not others:
            return []
        lock, done = threading.Lock(), threading.Event()
        answers, left = [], [len(others)]

        def answered(ok, value):
            with lock:
                if ok:
                    answers.extend(value)
                left[0] -= 1
                if not left[0]:
                    done.set()

        for node_id in others:
            try:
                self.cluster.link(node_id).call(op, args, answered)
            except (OSError, PermissionError):
                answered(False, None)
        done.wait(ASK_SECONDS)
        with lock:
            return list(answers)

    def _task_records(self, worker, records: list) -> None:
        """Filed per job (a node serves many drivers), until the job's driver reads them."""
        self._records_of.add(worker.job[0], records)

    def _task_output(self, worker, output: list) -> None:
        """Filed per job until its driver asks (``output``), with the pid of the worker that printed it."""
        pid = worker.handle.pid
        for job, stream, text in output:
            self._output_of.add(job, ((stream, pid, text),))

    def _op_records(self, worker, rid, job: bytes):
        """The task records of ``job`` from every node, new since the last time it asked."""
        return self._records_of.take(job) + self.ask_every_node("records_here", job)

    def _op_records_here(self, worker, rid, job: bytes):
        return self._records_of.take(job)

    def _op_output(self, worker, rid, job: bytes):
        """What the tasks of ``job`` printed on every node since the last time it asked."""
        return self._output_of.take(job) + self.ask_every_node("output_here", job)

    def _op_output_here(self, worker, rid, job: bytes):
        return self._output_of.take(job)

    # -- the cluster's resources -------------------------------------------------------------
    def cluster_resources(self) -> dict:
        total = dict(self._resources.total())
        for record in self.cluster.totals() if self.cluster else ():
            for k, v in record["resources"].items():
                total[k] = total.get(k, 0.0) + v
        return total

    def available_resources(self) -> dict:
        free = dict(self._resources.available())
        for record in self.cluster.totals() if self.cluster else ():
            for k, v in record["available"].items():
                free[k] = free.get(k, 0.0) + v
        return free

    def nodes(self) -> list[dict]:
        out = super().nodes()
        for record in self.cluster.totals() if self.cluster else ():
            host = record["address"].rpartition(":")[0]
            out.append({"NodeID": record["node_id"], "Alive": True, "alive": True, "NodeManagerAddress": host,
                        "NodeManagerHostname": record.get("host", host), "Resources": record["resources"]})
        return out

    def shutdown(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().shutdown()

