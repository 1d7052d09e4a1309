"""Placement groups on one node, shared by the built-in schedulers (local, and the node of multiprocess).

A group's bundles are reserved from the node's ``ResourcePool`` all or
nothing, under the node's lock: either every bundle gets a lease of the
node, or none does and the group stays PENDING. Pending groups are tried
again, in creation order, before each dispatch of the node's queues (so on
every release), ahead of plain work. Each bundle is a ``BundlePool`` of its
own (empty until placed) whose FIFO queues (``GroupQueues``, the same
``ShapeQueues`` as the node's) hold the work scheduled into it; bundle index
-1 queues in the group's ``any`` queues, whose pool takes the first bundle
with room. A lease taken from a bundle goes back to that bundle (``Lease.pool``)
whichever pool it is released to.

The scheduler that composes ``PlacementGroups`` gives it the node's lock,
pool and queues, ``put(ref, obj)`` to seal a ``pg.ready()`` ref, and
``on_removed(group, queued)``: called (outside the lock) when a group is
removed, with the work that was queued in it, for the scheduler to fail
that work and to kill the group's actors and running tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from anyray import ids
from anyray.context import current_task
from anyray.exceptions import ActorUnschedulableError, TaskPlacementGroupRemoved, TaskUnschedulableError
from anyray.executor import serialize_failure
from anyray.serialization import serialize
from anyray.specs import RemoteFailure
from anyray.util.placement_group import PlacementGroup, PlacementGroupID
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from .queues import ShapeQueues
from .resources import ResourcePool

PENDING, CREATED, REMOVED = "PENDING", "CREATED", "REMOVED"


def group_id_of(strategy) -> bytes | None:
    """The group a ``scheduling_strategy`` option schedules into, or None."""
    if type(strategy) is PlacementGroupSchedulingStrategy and strategy.placement_group is not None:
        return strategy.placement_group.id.binary()
    return None


def route(groups, strategy, actor: bool = False):
    """``groups.route(strategy, actor)`` for a group or node-affinity strategy, else (None, None): the node's
    own queues. ``groups`` None (a node without groups): (None, None) too."""
    if strategy is None or type(strategy) is str or groups is None:
        return None, None
    return groups.route(strategy, actor)


def removed_error(group_id: bytes) -> TaskPlacementGroupRemoved:
    return TaskPlacementGroupRemoved(f"The placement group {group_id.hex()} corresponding to this task has been "
                                     f"removed.")


class BundlePool(ResourcePool):
    """One bundle's resources: nothing is acquired from it (not even an empty demand) until the bundle is
    placed (``placed``), nor once its group is removed (``unplace``)."""

    def __init__(self, resources: dict[str, float], node_id: str):
        super().__init__(resources, [])
        self.node_id = node_id
        self._avail = dict.fromkeys(resources, 0.0)
        self._gpu_free = []
        self.ready = False  # placed, and not removed: work (even work that needs nothing) may start

    def placed(self, node_lease) -> None:
        """The bundle holds ``node_lease`` of its node: its resources (and that lease's GPUs) are usable."""
        with self._lock:
            self._avail = dict(self._total)
            self._gpu_ids = list(node_lease.gpu_ids)
            self._gpu_free = [1.0] * len(self._gpu_ids)
            self.ready = True

    def unplace(self) -> None:
        """The group is removed: nothing is acquired from the bundle any more."""
        with self._lock:
            self.ready = False
            self._avail = dict.fromkeys(self._total, 0.0)
            self._gpu_free = [0.0] * len(self._gpu_free)

    def acquire(self, demand: dict):
        return super().acquire(demand) if self.ready else None


class AnyBundle:
    """The pool of bundle index -1: a lease from the first bundle with room."""

    def __init__(self, bundles: list[Bundle]):
        self._bundles = bundles

    def acquire(self, demand: dict):
        for bundle in self._bundles:
            lease = bundle.pool.acquire(demand)
            if lease is not None:
                return lease
        return None

    def release(self, lease) -> None:
        lease.pool.release(lease)


class GroupQueues(ShapeQueues):
    """The queues of one bundle (or of index -1) of ``group``: a release there dispatches the whole node
    (``node_queues``), whose ``before_dispatch`` dispatches every group's queues."""

    def __init__(self, lock, pool, node_queues: ShapeQueues, group: Group):
        super().__init__(lock, pool, lambda task, lease: node_queues.start_task(task, lease))
        self.group = group
        self._node_queues = node_queues

    def release(self, lease) -> None:
        lease.pool.release(lease)
        self._node_queues.dispatch()

    def take_all(self) -> list:
        """Under the lock: empty the queues, returning what they held."""
        items = [item for queue in self.queues.values() for item in queue]
        self.queues.clear()
        return items


class Bundle:
    __slots__ = ("index", "resources", "pool", "queues", "lease")

    def __init__(self, index: int, resources: dict, pool: BundlePool):
        self.index = index
        self.resources = resources
        self.pool = pool
        self.queues: GroupQueues | None = None
        self.lease = None  # the node lease it holds once placed


class Group:
    """One placement group: its spec, state, bundles, queues and the ``ready()`` refs waiting for it."""

    def __init__(self, group_id: bytes, spec, job_id: bytes | None, lock, node_queues: ShapeQueues, node_id: str):
        self.id = group_id
        self.spec = spec
        self.job_id = job_id
        self.state = PENDING
        self.bundles = [Bundle(i, dict(b), BundlePool(b, node_id)) for i, b in enumerate(spec.bundles)]
        for bundle in self.bundles:
            bundle.queues = GroupQueues(lock, bundle.pool, node_queues, self)
        self.any = GroupQueues(lock, AnyBundle(self.bundles), node_queues, self)
        self.ready_refs: list = []
        self.created_at = time.time()
        self.placed_at: float | None = None

    def queues_for(self, index: int) -> GroupQueues:
        return self.any if index < 0 else self.bundles[index].queues

    def all_queues(self) -> list[GroupQueues]:
        return [self.any] + [b.queues for b in self.bundles]


class PlacementGroups:
    """The groups of one node: create, reserve, route work into, remove; the port's answers."""

    def __init__(self, lock, pool: ResourcePool, node_queues: ShapeQueues, put: Callable[[object, object], None],
                 on_removed: Callable[[Group, list], None]):
        self._lock = lock
        self._pool = pool
        self._node_queues = node_queues
        self._put = put
        self.on_removed = on_removed
        self.node_id = pool.node_id
        self.groups: dict[bytes, Group] = {}   # every group, removed ones too (the table shows them)
        self._pending: list[Group] = []         # in creation order
        self._live: list[Group] = []            # created, not removed: their queues are dispatched
        self._changed = threading.Condition(lock)
        self._placing = False
        node_queues.before_dispatch = self.before_dispatch

    # -- creating and placing ------------------------------------------------------------------
    def create(self, spec, job_id: bytes | None = None) -> bytes:
        """A new group for ``spec`` (``PlacementGroupSpec``): placed now if it fits, else pending."""
        with self._lock:
            if spec.name and self.find(spec.name, spec.namespace) is not None:
                raise ValueError(f"Failed to create placement group: name {spec.name!r} already exists in namespace "
                                 f"{spec.namespace!r} (remove that group first, or pick another name).")
            group = Group(ids.new_id(), spec, job_id, self._lock, self._node_queues, self.node_id)
            self.groups[group.id] = group
            self._pending.append(group)
        self._node_queues.dispatch()  # places it (before_dispatch) if it fits
        return group.id

    def before_dispatch(self) -> None:
        """Place the pending groups that fit now, then start the work queued in the live groups."""
        if not self._pending and not self._live:
            return
        with self._lock:
            if self._placing:  # re-entered from a start below: the outer call finishes the job
                return
            self._placing = True
            try:
                placed = [group for group in list(self._pending) if self._reserve(group)]
                queues = [q for group in self._live for q in group.all_queues()]
            finally:
                self._placing = False
        for group in placed:
            self._settle_ready(group)
        for q in queues:
            ShapeQueues.dispatch(q)

    def _reserve(self, group: Group) -> bool:
        """Under the lock: take every bundle's resources from the node, or none."""
        if not self.can_place(group):
            return False
        leases = []
        for bundle in group.bundles:
            lease = self._pool.acquire(bundle.resources)
            if lease is None:
                for taken in leases:
                    self._pool.release(taken)
                return False
            leases.append(lease)
        for bundle, lease in zip(group.bundles, leases):
            bundle.lease = lease
            bundle.pool.placed(lease)
        group.state = CREATED
        group.placed_at = time.time()
        self._pending.remove(group)
        self._live.append(group)
        self._changed.notify_all()
        return True

    def can_place(self, group: Group) -> bool:
        """Whether the group's strategy allows it on one node: STRICT_SPREAD of two bundles or more never."""
        return not (group.spec.strategy == "STRICT_SPREAD" and len(group.bundles) > 1)

    def _settle_ready(self, group: Group) -> None:
        with self._lock:
            refs, group.ready_refs = group.ready_refs, []
        for ref in refs:
            self._seal(ref, group)

    def _seal(self, ref, group: Group) -> None:
        if group.state == REMOVED:
            self._put(ref, serialize_failure(RemoteFailure(removed_error(group.id))))
        else:
            self._put(ref, serialize(PlacementGroup(PlacementGroupID(group.id))))

    # -- routing work -------------------------------------------------------------------------
    def route(self, strategy, actor: bool = False) -> tuple[GroupQueues | None, BaseException | None]:
        """Where work with ``strategy`` queues: (a group's queues, None); (None, None) for the node's own
        queues; (None, error) when it can never run here (its group removed, hard affinity elsewhere)."""
        if type(strategy) is NodeAffinitySchedulingStrategy:
            if strategy.soft or strategy.node_id == self.node_id:
                return None, None
            error = ActorUnschedulableError if actor else TaskUnschedulableError
            kind = "actor" if actor else "task"
            return None, error(f"The {kind} is not schedulable: the node {strategy.node_id} named by "
                               f"NodeAffinitySchedulingStrategy does not exist (this machine's node is "
                               f"{self.node_id}), and soft=False was given.")
        group_id = group_id_of(strategy)
        if group_id is None:
            return None, None
        with self._lock:
            group = self.groups.get(group_id)
            if group is None or group.state == REMOVED:
                return None, removed_error(group_id)
            return group.queues_for(strategy.placement_group_bundle_index), None

    # -- removing -----------------------------------------------------------------------------
    def remove(self, group_id: bytes) -> None:
        """Give the bundles back, fail the ready refs, and tell ``on_removed`` what was queued. Idempotent."""
        with self._lock:
            group = self.groups.get(group_id)
            if group is None or group.state == REMOVED:
                return
            if group in self._pending:
                self._pending.remove(group)
            if group in self._live:
                self._live.remove(group)
            group.state = REMOVED
            queued = [item for q in group.all_queues() for item in q.take_all()]
            leases = []
            for bundle in group.bundles:
                bundle.pool.unplace()
                if bundle.lease is not None:
                    leases.append(bundle.lease)
                    bundle.lease = None
            self._changed.notify_all()
        for lease in leases:
            self._pool.release(lease)
        self._settle_ready(group)
        self.on_removed(group, queued)
        self._node_queues.dispatch()

    def remove_job(self, job_id: bytes) -> None:
        """The job ended: remove its groups that are not detached."""
        with self._lock:
            ended = [g.id for g in self.groups.values()
                     if g.job_id == job_id and g.state != REMOVED and g.spec.lifetime != "detached"]
        for group_id in ended:
            self.remove(group_id)

    # -- the port's answers -------------------------------------------------------------------
    def ready(self, group_id: bytes, ref) -> None:
        with self._lock:
            group = self._group(group_id)
            if group.state == PENDING:
                group.ready_refs.append(ref)
                return
        self._seal(ref, group)

    def wait(self, group_id: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                group = self.groups.get(group_id)
                if group is None or group.state == REMOVED:
                    raise ValueError(f"Placement group {group_id.hex()} does not exist (it was removed).")
                if group.state == CREATED:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def table(self, group_id: bytes | None) -> dict:
        with self._lock:
            if group_id is not None:
                return self._row(self._group(group_id))
            return {g.id.hex(): self._row(g) for g in self.groups.values()}

    def _row(self, group: Group) -> dict:
        placed = group.state == CREATED
        return {"placement_group_id": group.id.hex(), "name": group.spec.name,
                "bundles": {b.index: dict(b.resources) for b in group.bundles},
                "bundles_to_node_id": {b.index: self.node_id if placed else "" for b in group.bundles},
                "strategy": group.spec.strategy, "state": group.state,
                "stats": {"end_to_end_creation_latency_ms":
                          (group.placed_at - group.created_at) * 1000 if group.placed_at else 0.0,
                          "scheduling_state": "FINISHED" if placed else "REMOVED" if group.state == REMOVED
                          else "INFEASIBLE" if self._infeasible(group) else "NO_RESOURCES"}}

    def _infeasible(self, group: Group) -> bool:
        if not self.can_place(group):
            return True
        need: dict[str, float] = {}
        for bundle in group.bundles:
            for k, v in bundle.resources.items():
                need[k] = need.get(k, 0.0) + v
        return bool(self._pool.infeasible(need))

    def find(self, name: str, namespace: str) -> bytes | None:
        with self._lock:
            for group in self.groups.values():
                if group.spec.name == name and group.spec.namespace == namespace and group.state != REMOVED:
                    return group.id
        return None

    def _group(self, group_id: bytes) -> Group:
        group = self.groups.get(group_id)
        if group is None:
            raise ValueError(f"Placement group {group_id.hex()} does not exist on this backend.")
        return group


class GroupPort:
    """The ``PlacementGroupPort`` of a scheduler whose ``groups`` (a ``PlacementGroups``, or a cluster's
    own object with the same methods) holds the groups. ``job`` (job id, namespace), when the scheduler
    has it, is the job the groups made through the port belong to."""

    places_groups = True
    groups: PlacementGroups

    def create_placement_group(self, spec) -> bytes:
        job = getattr(self, "job", None)
        group_id = self.groups.create(spec, job[0] if job else None)
        feasibility = getattr(self, "feasibility", None)
        if feasibility is not None:  # warn (once) at the call when no node can ever hold it
            warn_if_infeasible(feasibility, group_id, spec)
        return group_id

    def remove_placement_group(self, group_id: bytes) -> None:
        self.groups.remove(group_id)

    def placement_group_ready(self, group_id: bytes, ref) -> None:
        self.groups.ready(group_id, ref)

    def wait_placement_group(self, group_id: bytes, timeout: float) -> bool:
        return self.groups.wait(group_id, timeout)

    def placement_group_table(self, group_id: bytes | None) -> dict:
        return self.groups.table(group_id)

    def find_placement_group(self, name: str, namespace: str) -> bytes | None:
        return self.groups.find(name, namespace)

    def current_placement_group(self) -> bytes | None:
        return current_group_id()


def warn_if_infeasible(feasibility, group_id: bytes, spec) -> None:
    """``InfeasibleTaskWarning`` at the caller's line for a group no node can ever hold (on one node: the sum
    of its bundles), as for a task; it stays pending. (Ray prints the autoscaler's line instead.)"""
    need: dict[str, float] = {}
    for bundle in spec.bundles:
        for k, v in bundle.items():
            need[k] = need.get(k, 0.0) + v
    bundles = ", ".join(str(b) for b in spec.bundles)
    feasibility.check(group_id, f"placement group {group_id.hex()} (bundles {bundles}; it stays pending)", need)


def current_group_id() -> bytes | None:
    """The group of the task or actor running in this thread (its ``TaskContext``), or None."""
    ctx = current_task.get()
    return ctx.placement[0] if ctx is not None and ctx.placement else None
