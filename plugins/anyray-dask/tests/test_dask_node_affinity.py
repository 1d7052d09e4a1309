"""Node affinity on Dask, beyond the conformance suite: node ids of Dask workers, worker restrictions on a
private two-worker cluster, work that can run nowhere, and placement groups refused with a reason."""

from __future__ import annotations

import re

import pytest

import anyray
from anyray.exceptions import ActorUnschedulableError, TaskUnschedulableError
from anyray.util.placement_group import get_current_placement_group, placement_group, placement_group_table
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

pytest.importorskip("distributed")

DEADLINE = 60


@pytest.fixture(scope="module")
def nodes():
    if anyray.is_initialized():
        anyray.shutdown()
    anyray.init(backend="dask", num_cpus=2, num_workers=2)
    yield [n["NodeID"] for n in anyray.nodes()]
    anyray.shutdown()


@anyray.remote(num_cpus=0)
def where():
    return anyray.get_runtime_context().get_node_id()


@anyray.remote(num_cpus=0, num_returns=2)
def where_twice():
    node = anyray.get_runtime_context().get_node_id()
    return node, node


@anyray.remote(num_cpus=0)
class Probe:
    def node(self):
        return anyray.get_runtime_context().get_node_id()

    def group(self):
        return get_current_placement_group()


def on(node, soft=False):
    return NodeAffinitySchedulingStrategy(node, soft=soft)


def unknown(nodes):
    return next(d + nodes[0][1:] for d in "0123456789abcdef" if d + nodes[0][1:] not in nodes)


def test_each_worker_is_a_node_with_a_hex_id_that_tasks_actors_and_the_state_api_agree_on(nodes):
    assert len(nodes) == 2 and len(set(nodes)) == 2
    assert all(re.fullmatch("[0-9a-f]{56}", n) for n in nodes)
    assert {w.node_id for w in anyray.util.state.list_workers()} == set(nodes)  # the public API, as a program
    assert anyray.get_runtime_context().get_node_id() in nodes
    assert set(anyray.get([where.remote() for _ in range(4)], timeout=DEADLINE)) <= set(nodes)
    probe = Probe.remote()
    assert anyray.get(probe.node.remote(), timeout=DEADLINE) in nodes  # from the actor's own thread


def test_hard_affinity_runs_tasks_and_actors_on_the_named_worker(nodes):
    for node in nodes:
        assert anyray.get([where.options(scheduling_strategy=on(node)).remote() for _ in range(4)],
                          timeout=DEADLINE) == [node] * 4
        assert anyray.get(where_twice.options(scheduling_strategy=on(node)).remote(), timeout=DEADLINE) == [node] * 2
        probe = Probe.options(scheduling_strategy=on(node)).remote()
        assert anyray.get(probe.node.remote(), timeout=DEADLINE) == node


def test_soft_affinity_to_a_live_worker_runs_there(nodes):
    for node in nodes:
        assert anyray.get([where.options(scheduling_strategy=on(node, soft=True)).remote() for _ in range(4)],
                          timeout=DEADLINE) == [node] * 4


def test_hard_affinity_to_no_live_worker_fails_every_return_and_every_call(nodes):
    strategy = on(unknown(nodes))
    first, second = where_twice.options(scheduling_strategy=strategy).remote()
    for ref in (first, second):
        with pytest.raises(TaskUnschedulableError, match="no live Dask worker has that node id"):
            anyray.get(ref, timeout=DEADLINE)
    probe = Probe.options(scheduling_strategy=strategy, name="nowhere").remote()
    try:
        for handle in (probe, anyray.get_actor("nowhere")):
            with pytest.raises(ActorUnschedulableError, match="not schedulable"):
                anyray.get(handle.node.remote(), timeout=DEADLINE)
    finally:
        anyray.kill(probe)
    assert anyray.get(where.options(scheduling_strategy=on(unknown(nodes), soft=True)).remote(),
                      timeout=DEADLINE) in nodes


def test_placement_groups_are_refused_with_a_reason_and_none_exist(nodes):
    with pytest.raises(NotImplementedError, match="placement groups are not mapped to Dask"):
        placement_group([{"CPU": 1}])
    assert placement_group_table() == {}
    no_group = PlacementGroupSchedulingStrategy(None)  # Ray's "in no group": runs as usual
    assert anyray.get(where.options(scheduling_strategy=no_group).remote(), timeout=DEADLINE) in nodes
    probe = Probe.remote()
    assert anyray.get(probe.group.remote(), timeout=DEADLINE) is None
