"""Actors on any node of a cluster: placing a new actor where it fits, the record of where each actor
lives (``ACTORS``, signed with the cluster token), handles to actors on other nodes, and starting an
actor again when the node it lived on dies.

An actor is created here while its resources are free here; otherwise it
goes to a node that has them free (``create_actor_here`` there), and this
node keeps what it needs to start it again (``max_restarts``) if that node
dies. Every node that holds handles to an actor living elsewhere keeps it
alive there; kills and handle counts go to its node.
"""

from __future__ import annotations

import threading

from anyray.actor import ActorHandle
from anyray.exceptions import ActorDiedError
from anyray.object_ref import ObjectRef
from anyray.policy import allows_another, fits
from anyray.runtime import current_counter
from anyray.serialization import SerializedObject
from anyray.specs import ActorSpec
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..common.placement_groups import group_id_of
from ..node import messages as m
from ..node.store import to_wire
from .groups import WAIT
from .objects import object_ids
from .view import ignore

ACTORS = "actors/"  # actor id (hex) -> signed pickle of {"node", "class_name", "methods"}: where each actor lives
RETRY_SECONDS = 0.5  # before an actor whose bundle's node just went away is placed again
_CREATE_ACTOR_FIELDS = len(m.CreateActor._fields)  # CreateActorHere starts with CreateActor's fields


class RemoteActors:
    """The node's seams for actors on a cluster: ``create_actor`` places an actor, and ``handle_of``,
    ``named``, ``handles_gone`` and ``kill`` serve actors that live on other nodes."""

    def __init__(self, lock, pool, store, metadata, names, objects, actors, ledger, functions, requests, job: tuple):
        """``actors``: the node's own actors part; ``requests``: its request handlers."""
        self.view = None  # the ClusterView, once attached
        self.groups = None  # the node's ClusterGroupSeam (placement groups and node affinity)
        self.node_id = pool.node_id
        self._lock = lock
        self._pool = pool
        self._store = store
        self._metadata = metadata
        self._names = names
        self._objects = objects
        self._actors = actors
        self._ledger = ledger
        self._functions = functions
        self._requests = requests
        self._job = job
        self._actor_nodes: dict[bytes, str] = {}    # actors living on other nodes -> their node
        self._actor_info: dict[bytes, tuple] = {}   # ... -> (class name, method options)
        self._held_actors: set[bytes] = set()       # remote actors this node keeps alive (it has handles)
        self._placed_here: set[bytes] = set()       # actors another node handed here
        self._created: dict[bytes, list] = {}       # actors this node created elsewhere: [spec, args, contained, job]
        self._restart_counts: dict[bytes, int] = {}  # restarts of an actor started here again after its node died

    def register(self, register) -> None:
        register("create_actor_here", self._op_create_actor_here)

    # -- creating ------------------------------------------------------------------------------
    def create_actor(self, spec: ActorSpec, held=None, job=None):
        here = spec.actor_id in self._placed_here
        strategy = spec.options.get("scheduling_strategy")
        if (self.view is not None and not here and self.groups is not None and strategy is not None
                and type(strategy) is not str):
            placed = self._place_by_strategy(spec, held, job, strategy)
            if placed is not False:
                return placed
        elif self.view is not None and not here and (spec.resources or strategy == "SPREAD"):
            demand = spec.resources
            node_id = None
            if spec.options.get("scheduling_strategy") == "SPREAD":
                node_id = self.view.place_spread(demand, self._pool.available(), self._pool.total())
            if node_id is None and (not fits(demand, self._pool.available()) or self._pool.infeasible(demand)):
                node_id = self.view.place(demand)
            if node_id is not None:
                forwarded = self._forward_actor(spec, held, job or self._job, node_id)
                if forwarded is not False:
                    return None if forwarded is True else forwarded  # or get_if_exists' winner
        restarts = self._restart_counts.get(spec.actor_id, 0)  # started here again after its node died
        if here:  # its name was claimed where it was created
            name, spec.options["name"] = spec.options["name"], None
            try:
                self._actors.create_actor_here(spec, held, job, restarts)
            finally:
                spec.options["name"] = name
        else:
            winner = self._actors.create_actor_here(spec, held, job, restarts)
            if winner is not None:
                return winner
        if self.view is not None:
            self._metadata.put(ACTORS + spec.actor_id.hex(), self.view.seal_record(
                {"node": self.node_id, "class_name": spec.cls.name, "methods": spec.method_options}))
        return None

    def _place_by_strategy(self, spec: ActorSpec, held, job, strategy):
        """An actor with a placement group or node affinity strategy: created on its bundle's (or named)
        node, or created once its group is placed; False when it is created here."""
        target = self.groups.target(strategy, spec.resources)
        if target == WAIT:  # calls to it wait meanwhile, from any node (``pending``)
            self._metadata.put(ACTORS + spec.actor_id.hex(), self.view.seal_record({"pending": self.node_id}))
            self.groups.cluster.park(group_id_of(strategy), lambda: self.create_actor(spec, held, job))
            return None
        if not isinstance(target, str) or target == self.node_id:
            return False  # here (or the node's own routing refuses it)
        if type(strategy) is NodeAffinitySchedulingStrategy:
            if strategy.soft and not self.view.fits(target, spec.resources):
                return False
            # charged until that node's next record counts it (never given back: an actor lives on); an actor
            # in a placement group bundle takes nothing more from its node than the bundle already took
            self.view.charge(target, spec.resources)
        charged = type(strategy) is NodeAffinitySchedulingStrategy
        forwarded = self._forward_actor(spec, held, job or self._job, target, charged)
        if forwarded is False:  # the node just went: its group places the bundle again (or it is removed)
            timer = threading.Timer(RETRY_SECONDS, self.create_actor, (spec, held, job))
            timer.daemon = True
            timer.start()
            return None
        return None if forwarded is True else forwarded

    def _forward_actor(self, spec: ActorSpec, held, job, node_id: str, charged: bool = True) -> bool | ActorHandle:
        try:
            link = self.view.link(node_id)
        except (OSError, PermissionError):
            if charged:
                self.view.returned(node_id, spec.resources)
            return False
        winner = self._names.claim(spec)  # here and now: a taken name fails at the caller's .remote()
        if winner is not None:
            if held is not None:
                self._store.drop(held)
            return winner
        cls = spec.cls
        blob = None
        if cls.function_id not in link.functions:
            blob = self._functions.blob(cls)
            link.functions.add(cls.function_id)
        if held is not None:
            args, inner = self._ledger.copy_out(held), list(held.contained_refs)
            self._store.drop(held)  # its bytes travel inline; the references inside are kept below
        else:
            args = to_wire(spec.args) if spec.args is not None else None
            inner = list(spec.args.contained_refs) if spec.args is not None else []
        contained = m.contained_ids(inner) if inner else []
        with self._lock:
            self._actor_nodes[spec.actor_id] = node_id
            self._actor_info[spec.actor_id] = (cls.name, spec.method_options)
            self._held_actors.add(spec.actor_id)
            created = self._created.get(spec.actor_id)
            if created is None:  # kept to start it again if its node dies (max_restarts); the references
                # in its arguments stay alive here as long, so the other node can always read them
                self._created[spec.actor_id] = [spec, args, contained, job, list(spec.deps), inner]
        link.hold_actor(spec.actor_id)  # alive there while handles to it exist here
        self._objects.send_expect(link, [r._id for r in spec.deps] + object_ids(contained))
        link.call("create_actor_here", m.CreateActorHere.pack(
            spec.actor_id, cls.function_id, cls.name, blob, args, [r._id for r in spec.deps], spec.resources,
            spec.options, spec.namespace, spec.is_async, spec.method_options, contained, job,
            self._restart_counts.get(spec.actor_id, 0)), ignore)
        return True

    def _op_create_actor_here(self, worker, rid, args):
        msg = m.CreateActorHere._make(args)
        self._placed_here.add(msg.actor_id)
        if msg.restarts:
            self._restart_counts[msg.actor_id] = msg.restarts
        worker.job, saved = msg.job, worker.job
        try:  # the node's own create_actor, with CreateActor's fields (this type's first ones)
            return self._requests.handlers["create_actor"](worker, rid, msg[:_CREATE_ACTOR_FIELDS])
        finally:
            worker.job = saved

    # -- where actors live ---------------------------------------------------------------------
    def node_of(self, actor_id: bytes) -> str | None:
        """The node the actor lives on, if this node knows it lives on another one."""
        return self._actor_nodes.get(actor_id)

    def forget_node(self, actor_id: bytes, node_id: str) -> None:
        """Under the lock: ``node_id`` no longer answers for the actor; read its record again."""
        if self._actor_nodes.get(actor_id) == node_id:
            del self._actor_nodes[actor_id]

    def actor_node(self, actor_id: bytes) -> str | None:
        """The node an actor that does not live here lives on (its record, read once), or None; raises
        ``ActorDiedError`` if its record says it is dead."""
        node_id = self._actor_nodes.get(actor_id)
        if node_id is not None or self._actors.has_actor(actor_id):
            return node_id
        value = self._metadata.get(ACTORS + actor_id.hex())
        if value is None:
            return None
        record = self.view.open_record(value)
        if record is None:
            return None
        if record.get("dead"):
            raise ActorDiedError(record["dead"])
        if record.get("pending"):
            return None
        if record["node"] == self.node_id or not self.view.alive(record["node"]):
            return None
        with self._lock:
            self._actor_nodes[actor_id] = record["node"]
            self._actor_info[actor_id] = (record["class_name"], record["methods"])
        return record["node"]

    def pending(self, actor_id: bytes) -> bool:
        """Whether the actor waits for its placement group to be placed (its record says so)."""
        value = self._metadata.get(ACTORS + actor_id.hex()) if self.view is not None else None
        record = self.view.open_record(value) if value is not None else None
        return bool(record and record.get("pending") and self.view.alive(record["pending"]))

    # -- the node's seam: actors that live elsewhere ---------------------------------------------
    def handle_of(self, actor_id: bytes):
        """A handle to an actor that does not live here (kept alive on its node), or None."""
        if self.view is None:
            return None
        node_id = self.actor_node(actor_id)
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
            link = self.view.link(node_id)
        except (OSError, PermissionError):
            return
        link.hold_actor(actor_id)
        link.flush()

    def named(self, name: str, namespace: str):
        """The handle of the named actor when it does not live (alive) here, or None."""
        if self.view is None:
            return None
        actor_id = self._names.actor_id(name, namespace)
        return self._actors.handle_of(actor_id) if actor_id is not None else None

    def handles_gone(self, actor_id: bytes) -> bool:
        """No handle to the actor is left here: let it go on its node; False if it does not live elsewhere."""
        node_id = self._actor_nodes.get(actor_id)
        if node_id is None:
            return False
        with self._lock:
            if actor_id not in self._held_actors:
                return True
            self._held_actors.discard(actor_id)
            self._created.pop(actor_id, None)  # it ends: nothing to start again
        link = self.view.existing_link(node_id)
        if link is not None:
            link.let_go_actor(actor_id)
        return True

    def kill(self, actor_id: bytes, no_restart: bool) -> bool:
        """Kill the actor on its node; False if it does not live elsewhere."""
        node_id = self.actor_node(actor_id) if self.view is not None else None
        if node_id is None:
            return False
        try:
            self.view.link(node_id).call("kill", m.Kill.pack(actor_id, no_restart), ignore)
        except (OSError, PermissionError):
            pass
        return True

    # -- a node died ---------------------------------------------------------------------------
    def node_lost(self, node_id: str) -> None:
        """``node_id`` died: the actors this node created there start again elsewhere, while allowed."""
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
            self._metadata.put(ACTORS + actor_id.hex(), self.view.seal_record({"dead": cause}))
            self._names.release(spec)
            return
        self._restart_counts[actor_id] = restarts + 1
        if args is not None:
            inline = m.Inline._make(args)
            spec.args = SerializedObject(inline.data, inline.buffers, _contained_of(contained))
        spec.deps = deps
        name, spec.options["name"] = spec.options["name"], None  # its name stays claimed under its id
        try:
            self._actors.create_actor(spec, None, job)
        finally:
            spec.options["name"] = name


def _contained_of(contained) -> list:
    counter = current_counter()
    return [ObjectRef(oid, None, counter) for oid in object_ids(contained or ())]
