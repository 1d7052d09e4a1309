"""Where a cluster node puts work (``adapters/cluster/view.py``, ``placement.py``), with no processes: the
other nodes' records in a real in-memory metadata store, a real resource pool and real shape queues."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from anyray import ids
from anyray.adapters.cluster.placement import SpillbackPlacement
from anyray.adapters.cluster.view import NODES, ClusterView
from anyray.adapters.common.queues import ShapeQueues
from anyray.adapters.common.resources import ResourcePool
from anyray.adapters.metadata.memory import MemoryMetadataStore
from anyray.adapters.node.tasks import Task
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor, TaskSpec


def _publish(metadata, node_id: str, resources: dict, available: dict | None = None, port: int = 1) -> None:
    metadata.put(NODES + node_id, json.dumps({"node_id": node_id, "resources": resources,
                                              "available": available or resources,
                                              "address": f"127.0.0.1:{port}"}).encode())


def _eventually(predicate, seconds: float = 30.0) -> None:
    """Metadata watches are delivered on a thread of their own: wait for ``predicate`` to hold."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "the metadata store's watch never delivered the change"
        time.sleep(0.005)


@pytest.fixture
def cluster():
    """This node (``here``) and the view it has of two others: ``small`` (2 CPUs) and ``big`` (8 CPUs, 1 GPU)."""
    metadata = MemoryMetadataStore()
    _publish(metadata, "small", {"CPU": 2.0})
    _publish(metadata, "big", {"CPU": 8.0, "GPU": 1.0})
    changes, dead = [], []
    view = ClusterView(metadata, "here", b"token", on_change=lambda: changes.append(1), on_dead=dead.append)
    view.changes, view.dead, view.metadata = changes, dead, metadata
    yield view
    view.close()


def test_place_picks_the_node_with_the_most_cpus_free_and_charges_it(cluster):
    assert cluster.place({"CPU": 4.0}) == "big"
    assert cluster.place({"CPU": 4.0}) == "big"  # 4 left there
    assert cluster.place({"CPU": 2.0}) == "small"  # big is charged for 8 now
    assert cluster.place({"CPU": 1.0}) is None


def test_work_that_came_back_is_credited_to_its_node(cluster):
    assert cluster.place({"GPU": 1.0}) == "big"
    assert cluster.place({"GPU": 1.0}) is None
    cluster.returned("big", {"GPU": 1.0})
    assert cluster.place({"GPU": 1.0}) == "big"


def test_a_record_counts_what_was_charged_before_it_and_returned_work_is_credited_after(cluster):
    assert cluster.place({"CPU": 8.0}) == "big"
    _publish(cluster.metadata, "big", {"CPU": 8.0, "GPU": 1.0}, {"CPU": 0.0, "GPU": 1.0})  # it runs that work now
    _eventually(lambda: cluster.records["big"]["available"]["CPU"] == 0.0)
    assert cluster.place({"CPU": 1.0}) == "small"  # big is not charged twice for the same work
    cluster.returned("big", {"CPU": 8.0})  # that work is done: big has room again before its next record
    assert cluster.place({"CPU": 8.0}) == "big"


def test_what_other_nodes_can_ever_hold(cluster):
    assert cluster.feasible_elsewhere({"GPU": 1.0})
    assert not cluster.feasible_elsewhere({"GPU": 2.0})
    assert sorted(r["node_id"] for r in cluster.totals()) == ["big", "small"]
    assert cluster.alive("here") and cluster.alive("small") and not cluster.alive("gone")


def test_a_node_whose_record_goes_is_dead(cluster):
    cluster.metadata.delete(NODES + "small")
    _eventually(lambda: cluster.dead == ["small"])
    assert not cluster.alive("small")
    assert cluster.place({"CPU": 2.0}) == "big"


class _Tasks:
    """What the placement uses of the node's tasks part when work stays here: running it here."""

    def __init__(self):
        self.ran_here: list = []
        self.ready_here = self.ran_here.append


class _Node:
    def __init__(self, total: dict):
        self.pool = ResourcePool(total, [])
        self.lock = threading.RLock()
        self.shapes = ShapeQueues(self.lock, self.pool, None)
        self.tasks = _Tasks()
        self.ran_here = self.tasks.ran_here


def _task(demand: dict) -> Task:
    spec = TaskSpec(task_id=ids.new_id(), function=FunctionDescriptor(b"f" * 16, "f", None),
                    args=SerializedObject(b""), deps=[], returns=[ObjectRef(ids.new_id())], resources=demand,
                    options={"max_retries": 0}, name="f")
    return Task(spec, None, (b"job", "ns"))


def _placement(cluster, node: _Node) -> SpillbackPlacement:
    placement = SpillbackPlacement(node.lock, node.pool, node.shapes.queues, node.tasks, None, None, None, None)
    placement.view = cluster
    return placement


def test_work_stays_here_while_it_fits_here_now(cluster):
    node = _Node({"CPU": 2.0})
    placement = _placement(cluster, node)
    assert placement.route(_task({"CPU": 1.0})) is False
    assert cluster.place({"CPU": 8.0}) == "big"  # nothing was charged to another node


def test_work_that_does_not_fit_here_now_goes_to_a_node_with_room(cluster, caplog):
    node = _Node({"CPU": 2.0})
    node.pool.acquire({"CPU": 2.0})  # busy here
    placement = _placement(cluster, node)
    task = _task({"CPU": 1.0})
    with caplog.at_level(logging.WARNING, logger="anyray"):
        assert placement.route(task) is True
    # big has nobody listening at its address: the task runs here after all, and big's charge is taken back
    assert node.ran_here == [task] and task.state == "waiting"
    assert "could not hand f to node big" in caplog.text
    assert cluster.place({"CPU": 8.0}) == "big"


def test_a_task_handed_here_by_another_node_stays_here(cluster):
    node = _Node({"CPU": 2.0})
    node.pool.acquire({"CPU": 2.0})
    task = _task({"CPU": 1.0})
    task.spilled = True
    assert _placement(cluster, node).route(task) is False


def test_without_the_cluster_view_everything_stays_here():
    node = _Node({"CPU": 1.0})
    node.pool.acquire({"CPU": 1.0})
    placement = SpillbackPlacement(node.lock, node.pool, node.shapes.queues, node.tasks, None, None, None, None)
    assert placement.route(_task({"CPU": 1.0})) is False


def test_the_cluster_feasibility_totals_silence_the_warning_for_work_another_node_can_hold(cluster, recwarn):
    from anyray.adapters.common.resources import NodeResources
    from anyray.exceptions import InfeasibleTaskWarning
    from anyray.policy import Feasibility

    here = NodeResources(ResourcePool({"CPU": 2.0}, []))
    feasibility = Feasibility(lambda: [here.pool.total(), *(r["resources"] for r in cluster.totals())],
                              here.infeasible_text)
    assert feasibility.check(b"gpu", "needs_a_gpu", {"GPU": 1.0})  # big has one
    assert not feasibility.check(b"gpus", "needs_two_gpus", {"GPU": 2.0})
    [warning] = [w for w in recwarn if issubclass(w.category, InfeasibleTaskWarning)]
    assert "needs_two_gpus needs {'GPU': 2.0} but this machine has {'GPU': 0.0}" in str(warning.message)


