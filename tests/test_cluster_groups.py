"""A cluster node's placement groups (``adapters/cluster/groups.py``, ``group_placer.py``, ``group_host.py``)
with no processes: a real ``ResourcePool`` and shape queues, the records in a real in-memory metadata store,
one node with no others in view."""

from __future__ import annotations

import threading
import time

from anyray import ids
from anyray.adapters.cluster.group_host import BundleHost, ClusterGroupSeam
from anyray.adapters.cluster.group_records import new_record
from anyray.adapters.cluster.groups import WAIT, ClusterGroups
from anyray.adapters.common.object_store import MemoryObjectStore
from anyray.adapters.common.placement_groups import PlacementGroups
from anyray.adapters.common.queues import ShapeQueues
from anyray.adapters.common.resources import ResourcePool
from anyray.adapters.metadata.memory import MemoryMetadataStore
from anyray.ports.placement_groups import PlacementGroupSpec
from anyray.util.placement_group import PlacementGroup, PlacementGroupID
from anyray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

WAIT_SECONDS = 30.0


class _Node:
    def __init__(self, total: dict, metadata=None):
        self.pool = ResourcePool(total, [])
        self.lock = threading.RLock()
        queues = ShapeQueues(self.lock, self.pool, lambda task, lease: None)
        self.store = MemoryObjectStore(None)
        self.removed: list = []
        own = PlacementGroups(self.lock, self.pool, queues, self.store.put,
                              lambda group, queued: self.removed.append(group.id))
        self.host = BundleHost.replacing(own)
        self.metadata = metadata or MemoryMetadataStore()
        self.groups = ClusterGroups(self.metadata, self.pool.node_id, self.host, self.store.put)
        self.seam = ClusterGroupSeam(self.host, self.groups)

    def create(self, bundles, strategy="PACK", name="", lifetime=None, job=b"job"):
        return self.groups.create(PlacementGroupSpec(bundles, strategy, name, "ns", lifetime), job)

    def close(self):
        self.groups.close()


def _until(predicate, what: str):
    deadline = time.monotonic() + WAIT_SECONDS
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_group_is_placed_on_the_node_and_reserved_there():
    node = _Node({"CPU": 2.0})
    try:
        group = node.create([{"CPU": 1.0}, {"CPU": 1.0}], strategy="STRICT_PACK")
        assert node.groups.wait(group, WAIT_SECONDS)
        row = node.groups.table(group)
        assert row["state"] == "CREATED" and row["bundles_to_node_id"] == {0: node.pool.node_id, 1: node.pool.node_id}
        assert node.pool.available() == {}
        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(group)), 1)
        queues, error = node.seam.route(strategy)
        assert error is None and queues is not None  # work into bundle 1 queues in that bundle, here
        assert node.seam.target(strategy) == node.pool.node_id
    finally:
        node.close()


def test_a_group_that_does_not_fit_waits_and_takes_nothing_until_it_fits():
    node = _Node({"CPU": 2.0})
    try:
        held = node.pool.acquire({"CPU": 1.0})
        group = node.create([{"CPU": 1.0}, {"CPU": 1.0}])
        assert not node.groups.wait(group, 1.0)
        assert node.pool.available() == {"CPU": 1.0}  # no half group
        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(group)), 0)
        assert node.seam.target(strategy) == WAIT
        _until(lambda: node.groups.table(group)["stats"]["scheduling_state"] == "NO_RESOURCES", "NO_RESOURCES")
        node.pool.release(held)
        node.groups.placer.kick()
        assert node.groups.wait(group, WAIT_SECONDS)
        never = node.create([{"CPU": 3.0}])
        _until(lambda: node.groups.table(never)["stats"]["scheduling_state"] == "INFEASIBLE", "INFEASIBLE")
    finally:
        node.close()


def test_removing_a_group_gives_its_bundles_back_and_work_waiting_for_it_goes_on():
    node = _Node({"CPU": 1.0})
    try:
        held = node.pool.acquire({"CPU": 1.0})
        group = node.create([{"CPU": 1.0}])
        went_on = threading.Event()
        node.groups.park(group, went_on.set)
        node.groups.remove(group)
        assert went_on.wait(WAIT_SECONDS)  # and then finds its group removed
        strategy = PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(group)), 0)
        assert "removed" in str(node.seam.target(strategy))
        node.pool.release(held)
        other = node.create([{"CPU": 1.0}])
        assert node.groups.wait(other, WAIT_SECONDS)
        node.groups.remove(other)
        _until(lambda: node.pool.available() == {"CPU": 1.0}, "the bundle given back")
        assert other in node.removed
    finally:
        node.close()


def test_a_job_s_groups_go_with_it_but_detached_ones_stay():
    node = _Node({"CPU": 2.0})
    try:
        mine = node.create([{"CPU": 1.0}], job=b"one")
        kept = node.create([{"CPU": 1.0}], lifetime="detached", job=b"one")
        other = node.create([{"CPU": 0.5}], job=b"two")
        node.groups.remove_job(b"one")
        assert node.groups.table(mine)["state"] == "REMOVED"
        assert node.groups.table(kept)["state"] != "REMOVED" and node.groups.table(other)["state"] != "REMOVED"
    finally:
        node.close()


def test_bundles_reserved_for_a_placement_that_never_made_the_group_are_given_back():
    node = _Node({"CPU": 2.0})
    try:
        # Another node's owner reserved a bundle here, then died before it marked the group placed.
        spec = PlacementGroupSpec([{"CPU": 1.0}], "PACK", "", "ns", "detached")
        record = new_record(ids.new_id(), spec, "a-node-that-died", None)
        node.groups.records.add(record)
        assert node.host.reserve(record, {0: {"CPU": 1.0}})
        assert node.pool.available() == {"CPU": 1.0}
        node.groups.reconcile(unconfirmed_seconds=60.0)
        assert node.pool.available() == {"CPU": 1.0}  # not yet: its owner may still confirm it
        node.groups.reconcile(unconfirmed_seconds=0.0)
        assert node.pool.available() == {"CPU": 2.0}
        # A group removed while this node's watch was not looking: its bundles go too.
        assert node.host.reserve(record, {0: {"CPU": 1.0}})
        node.groups.records.update(record["id"], lambda r: dict(r, state="REMOVED"))
        node.groups.reconcile(unconfirmed_seconds=60.0)
        assert node.pool.available() == {"CPU": 2.0}
    finally:
        node.close()


def test_a_detached_group_of_a_dead_owner_is_taken_over_and_placed_again():
    metadata = MemoryMetadataStore()
    node = _Node({"CPU": 2.0}, metadata)
    try:
        spec = PlacementGroupSpec([{"CPU": 1.0}, {"CPU": 1.0}], "SPREAD", "", "ns", "detached")
        kept = new_record(ids.new_id(), spec, "dead", None)
        kept.update(state="CREATED", nodes=["dead", node.pool.node_id])
        node.groups.records.add(kept)
        assert node.host.reserve(kept, {1: {"CPU": 1.0}})
        spec = PlacementGroupSpec([{"CPU": 0.5}], "PACK", "", "ns", None)
        gone = new_record(ids.new_id(), spec, "dead", None)
        node.groups.records.add(gone)
        _until(lambda: kept["id"] in node.groups._cache and gone["id"] in node.groups._cache, "the watch")
        node.groups.node_lost("dead")
        assert node.groups.table(bytes.fromhex(gone["id"]))["state"] == "REMOVED"  # its driver died with it
        assert node.groups.wait(bytes.fromhex(kept["id"]), WAIT_SECONDS)
        row = node.groups.table(bytes.fromhex(kept["id"]))
        assert row["bundles_to_node_id"] == {0: node.pool.node_id, 1: node.pool.node_id}
        assert node.groups.records.get(kept["id"])["owner"] == node.pool.node_id
    finally:
        node.close()
