"""Placement groups on one node (``adapters/common/placement_groups.py``), with no processes: a real
``ResourcePool``, the node's shape queues and re-entrant lock, a real in-memory store for the ready refs,
and work that only records the lease it was started on."""

from __future__ import annotations

import threading

import pytest

from anyray import ids
from anyray.adapters.common.object_store import MemoryObjectStore
from anyray.adapters.common.placement_groups import PlacementGroups
from anyray.adapters.common.queues import ShapeQueues
from anyray.adapters.common.resources import ResourcePool
from anyray.exceptions import ActorUnschedulableError, TaskPlacementGroupRemoved, TaskUnschedulableError
from anyray.object_ref import ObjectRef
from anyray.ports.placement_groups import PlacementGroupSpec
from anyray.serialization import deserialize
from anyray.specs import RemoteFailure
from anyray.util.placement_group import PlacementGroup, PlacementGroupID
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy


class _Node:
    def __init__(self, total: dict):
        self.pool = ResourcePool(total, [])
        self.lock = threading.RLock()
        self.started: list = []
        self.queues = ShapeQueues(self.lock, self.pool, lambda task, lease: self.started.append((task, lease)))
        self.store = MemoryObjectStore(None)
        self.removed: list = []
        self.groups = PlacementGroups(self.lock, self.pool, self.queues, self.store.put,
                                      lambda group, queued: self.removed.append((group.id, queued)))

    def create(self, bundles, strategy="PACK", name="", namespace="ns"):
        spec = PlacementGroupSpec(bundles=bundles, strategy=strategy, name=name, namespace=namespace, lifetime=None)
        return self.groups.create(spec, b"job")

    def state(self, group_id) -> str:
        return self.groups.table(group_id)["state"]

    def ready_value(self, group_id):
        ref = ObjectRef(ids.new_id())
        self.groups.ready(group_id, ref)
        obj = self.store.get([ref], 0)[0] if self.store.contains(ref) else None
        return ref, None if obj is None else deserialize(obj)


def _strategy(group_id: bytes, index: int = -1) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(group_id)), index)


def test_a_group_takes_all_its_bundles_or_none_and_is_placed_once_they_are_free():
    node = _Node({"CPU": 2.0})
    held = node.pool.acquire({"CPU": 1.0})
    group = node.create([{"CPU": 1.0}, {"CPU": 1.0}])
    assert node.state(group) == "PENDING"
    assert node.pool.available() == {"CPU": 1.0}  # the free CPU is not taken by half a group
    _, value = node.ready_value(group)
    assert value is None
    node.queues.release(held)  # a release dispatches: the pending group is placed first
    assert node.state(group) == "CREATED"
    assert node.pool.available() == {}
    assert node.groups.wait(group, 0) is True
    _, value = node.ready_value(group)
    assert value == PlacementGroup(PlacementGroupID(group))


def test_pending_groups_are_placed_in_creation_order():
    node = _Node({"CPU": 2.0})
    held = node.pool.acquire({"CPU": 2.0})
    first = node.create([{"CPU": 2.0}])
    second = node.create([{"CPU": 1.0}])
    node.queues.release(held)
    assert (node.state(first), node.state(second)) == ("CREATED", "PENDING")


def test_a_pending_ready_ref_is_sealed_when_the_group_is_placed():
    node = _Node({"CPU": 1.0})
    held = node.pool.acquire({"CPU": 1.0})
    group = node.create([{"CPU": 1.0}])
    ref, _ = node.ready_value(group)
    assert not node.store.contains(ref)
    node.queues.release(held)
    assert deserialize(node.store.get([ref], 1)[0]) == PlacementGroup(PlacementGroupID(group))


def test_work_in_a_bundle_uses_only_that_bundle_and_its_lease_goes_back_there():
    node = _Node({"CPU": 2.0, "Custom": 1.0})
    group = node.create([{"CPU": 1.0}, {"Custom": 1.0}])
    assert node.pool.available() == {"CPU": 1.0}
    queues, error = node.groups.route(_strategy(group, 1))
    assert error is None
    queues.push((("Custom", 1.0),), "in bundle 1")
    queues.push((("Custom", 1.0),), "behind it")
    node.queues.dispatch()
    assert [task for task, _ in node.started] == ["in bundle 1"]
    lease = node.started[0][1]
    node.pool.release(lease)  # released to the node's pool: it goes back to its bundle
    assert node.pool.available() == {"CPU": 1.0}
    node.queues.dispatch()
    assert [task for task, _ in node.started] == ["in bundle 1", "behind it"]


def test_index_minus_one_takes_any_bundle_with_room():
    node = _Node({"CPU": 2.0})
    group = node.create([{"CPU": 1.0}, {"CPU": 1.0}])
    queues, _ = node.groups.route(_strategy(group))
    for name in ("a", "b", "c"):
        queues.push((("CPU", 1.0),), name)
    node.queues.dispatch()
    assert [task for task, _ in node.started] == ["a", "b"]
    assert {lease.pool for _, lease in node.started} == {b.pool for b in node.groups.groups[group].bundles}


def test_removing_a_group_returns_its_bundles_and_hands_back_its_queued_work():
    node = _Node({"CPU": 1.0})
    group = node.create([{"CPU": 1.0}], name="g")
    queues, _ = node.groups.route(_strategy(group, 0))
    queues.push((("CPU", 1.0),), "running")
    queues.push((("CPU", 1.0),), "queued")
    node.queues.dispatch()
    node.groups.remove(group)
    node.groups.remove(group)  # again: nothing happens
    assert node.removed == [(group, ["queued"])]
    assert node.pool.available() == {"CPU": 1.0}
    assert node.state(group) == "REMOVED" and node.groups.find("g", "ns") is None
    _, value = node.ready_value(group)
    assert type(value) is RemoteFailure and isinstance(value.error, TaskPlacementGroupRemoved)
    with pytest.raises(ValueError, match="does not exist"):
        node.groups.wait(group, 0)
    _, error = node.groups.route(_strategy(group))
    assert isinstance(error, TaskPlacementGroupRemoved)
    node.pool.release(node.started[0][1])  # the running work ends after: the bundle takes nothing more
    assert node.pool.available() == {"CPU": 1.0}


def test_removing_a_pending_group_fails_its_ready_ref():
    node = _Node({"CPU": 1.0})
    group = node.create([{"CPU": 5.0}])
    ref, _ = node.ready_value(group)
    assert node.groups.table(group)["stats"]["scheduling_state"] == "INFEASIBLE"
    node.groups.remove(group)
    value = deserialize(node.store.get([ref], 1)[0])
    assert type(value) is RemoteFailure and isinstance(value.error, TaskPlacementGroupRemoved)


def test_strict_spread_over_one_node_stays_pending_and_other_strategies_fit():
    node = _Node({"CPU": 4.0})
    spread = node.create([{"CPU": 1.0}, {"CPU": 1.0}], strategy="STRICT_SPREAD")
    assert node.state(spread) == "PENDING"
    assert node.groups.table(spread)["bundles_to_node_id"] == {0: "", 1: ""}
    for strategy in ("PACK", "SPREAD", "STRICT_PACK"):
        group = node.create([{"CPU": 0.5}, {"CPU": 0.5}], strategy=strategy)
        row = node.groups.table(group)
        assert row["state"] == "CREATED" and set(row["bundles_to_node_id"].values()) == {node.pool.node_id}


def test_a_live_name_is_taken_per_namespace():
    node = _Node({"CPU": 2.0})
    group = node.create([{"CPU": 1.0}], name="g")
    with pytest.raises(ValueError, match="already exists"):
        node.create([{"CPU": 1.0}], name="g")
    other = node.create([{"CPU": 1.0}], name="g", namespace="other")
    assert node.groups.find("g", "ns") == group and node.groups.find("g", "other") == other


def test_node_affinity_runs_here_or_is_unschedulable():
    node = _Node({"CPU": 1.0})
    here = node.pool.node_id
    elsewhere = ("0" if here[0] != "0" else "1") + here[1:]
    assert node.groups.route(NodeAffinitySchedulingStrategy(here, soft=False)) == (None, None)
    assert node.groups.route(NodeAffinitySchedulingStrategy(elsewhere, soft=True)) == (None, None)
    _, error = node.groups.route(NodeAffinitySchedulingStrategy(elsewhere, soft=False))
    assert isinstance(error, TaskUnschedulableError)
    _, error = node.groups.route(NodeAffinitySchedulingStrategy(elsewhere, soft=False), actor=True)
    assert isinstance(error, ActorUnschedulableError)


def test_a_job_s_groups_go_with_it_unless_detached():
    node = _Node({"CPU": 2.0})
    plain = node.create([{"CPU": 1.0}])
    spec = PlacementGroupSpec(bundles=[{"CPU": 1.0}], strategy="PACK", name="", namespace="ns", lifetime="detached")
    detached = node.groups.create(spec, b"job")
    node.groups.remove_job(b"job")
    assert (node.state(plain), node.state(detached)) == ("REMOVED", "CREATED")


@pytest.mark.parametrize("backend", ["local", "multiprocess"])
def test_a_group_no_node_can_hold_warns_at_the_call_and_stays_pending(backend):
    import anyray
    from anyray.exceptions import InfeasibleTaskWarning
    from anyray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    anyray.init(backend=backend, num_cpus=2)
    try:
        with pytest.warns(InfeasibleTaskWarning, match=r"placement group .*CPU") as caught:
            group = placement_group([{"CPU": 2}, {"CPU": 1}])
        assert [w.filename for w in caught] == [__file__]
        assert placement_group_table(group)["state"] == "PENDING"
        remove_placement_group(group)
    finally:
        anyray.shutdown()


def test_work_in_a_gpu_bundle_gets_the_gpu_the_bundle_reserved():
    node = _Node({"CPU": 1.0})
    node.pool = pool = ResourcePool({"GPU": 2.0}, [5, 7])
    node.queues = ShapeQueues(node.lock, pool, lambda task, lease: node.started.append((task, lease)))
    node.groups = PlacementGroups(node.lock, pool, node.queues, node.store.put, lambda group, queued: None)
    held = pool.acquire({"GPU": 1.0})  # GPU 5 is taken: the group's bundle gets GPU 7
    group = node.create([{"GPU": 1.0}])
    queues, _ = node.groups.route(_strategy(group, 0))
    queues.push((("GPU", 1.0),), "trains")
    node.queues.dispatch()
    assert [(task, lease.gpu_ids) for task, lease in node.started] == [("trains", [7])]
    assert held.gpu_ids == [5] and pool.available() == {}


def test_work_that_needs_nothing_waits_for_its_pending_group_too():
    node = _Node({"CPU": 1.0})
    held = node.pool.acquire({"CPU": 1.0})
    group = node.create([{"CPU": 1.0}])
    queues, _ = node.groups.route(_strategy(group))
    queues.push((), "needs nothing")
    node.queues.dispatch()
    assert node.started == []  # as in Ray: work submitted to a pending group waits until it is created
    node.queues.release(held)
    assert [task for task, _ in node.started] == ["needs nothing"]
