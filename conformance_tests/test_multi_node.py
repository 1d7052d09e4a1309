"""Several nodes: work spreads over them, custom resources pin it, objects and actors are reachable from all.

Runs where the backend declares ``multi_node`` and the cluster has two alive
nodes or more (the cluster envs start two daemons). A probe task that holds
one CPU until every CPU of the cluster is held by a probe runs on every node
at once, so each test reaches every node without naming one.
"""

import time
import uuid

import numpy as np
import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Arrivals, Counter, hold_until_all_arrive
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

pytestmark = [pytest.mark.usefixtures("anyray_session"), pytest.mark.requires("multi_node")]


@pytest.fixture
def node_ids():
    alive = {node["NodeID"] for node in anyray.nodes() if node["Alive"]}
    if len(alive) < 2:
        pytest.skip("needs a cluster of two nodes or more")
    return alive


def on_every_node(fn, *args):
    """Run ``fn(*args)`` once per CPU of the cluster, all at once; return ``[(node id, value), ...]``.

    Each probe holds its CPU until every probe has started: it polls without blocking (a task blocked
    in ``get`` lends its CPU, which would let one node take them all)."""
    cpus = int(anyray.cluster_resources()["CPU"])
    arrivals = Arrivals.remote()

    @anyray.remote(num_cpus=1)
    def probe(arrivals, *args):
        hold_until_all_arrive(arrivals, cpus)  # every CPU of the cluster is then held by a probe
        return anyray.get_runtime_context().get_node_id(), fn(*args)

    probes = [probe.remote(arrivals, *args) for _ in range(cpus)]
    try:
        return anyray.get(probes, timeout=DEADLINE * 2)
    finally:  # a failed test leaves no probe holding a CPU for the tests after it
        anyray.wait(probes, num_returns=len(probes), timeout=DEADLINE * 2)


def test_tasks_run_on_every_node(node_ids):
    ran_on = {node for node, _ in on_every_node(lambda: None)}
    assert ran_on == node_ids


def test_a_custom_resource_pins_work_to_the_nodes_that_have_it(node_ids):
    having = {n["NodeID"] for n in anyray.nodes() if n["Alive"] and n["Resources"].get("Custom", 0) >= 1}
    if not having or having == node_ids:
        pytest.skip("needs a custom resource 'Custom' on some nodes only")

    @anyray.remote(resources={"Custom": 1})
    def where():
        return anyray.get_runtime_context().get_node_id()

    assert set(anyray.get([where.remote() for _ in range(6)], timeout=DEADLINE)) <= having


def test_a_large_object_is_read_on_every_node(node_ids):
    array = np.arange(2_000_000, dtype=np.int64)  # 16 MB: shared memory, moved between nodes
    ref = anyray.put(array)
    results = on_every_node(lambda box: int(anyray.get(box[0]).sum()), [ref])  # in a list: read inside the task
    assert {node for node, _ in results} == node_ids
    assert {value for _, value in results} == {int(array.sum())}


def test_large_results_come_back_from_every_node(node_ids):
    results = on_every_node(lambda: anyray.put(np.full(1_000_000, 7, dtype=np.int64)))
    for _node, ref in results:
        value = anyray.get(ref, timeout=DEADLINE)
        assert value.shape == (1_000_000,) and int(value[0]) == 7 and int(value[-1]) == 7


def test_large_results_are_read_everywhere_while_they_are_made_and_after(node_ids):
    """A large result made on each node is asked for (get, wait) before it exists, then read by the driver
    and by a task on every node, as an argument and inside a list."""
    size = 500_000  # 4 MB each: shared memory, where the task ran

    @anyray.remote(num_cpus=1)
    def make(value):
        time.sleep(0.5)  # the driver asks for it meanwhile
        return np.full(size, value, dtype=np.int64)

    @anyray.remote(num_cpus=1)
    def total(array, box):
        return int(array.sum()), int(anyray.get(box[0]).sum())

    def on(node):
        return NodeAffinitySchedulingStrategy(node, soft=False)

    nodes = sorted(node_ids)
    refs = [make.options(scheduling_strategy=on(node)).remote(i) for i, node in enumerate(nodes, 1)]
    early = [total.options(scheduling_strategy=on(node)).remote(ref, [ref]) for ref in refs for node in nodes]
    assert anyray.get(early, timeout=DEADLINE) == [(i * size, i * size) for i in range(1, len(nodes) + 1)
                                                   for _ in nodes]
    late = [make.options(scheduling_strategy=on(node)).remote(i) for i, node in enumerate(nodes, 1)]
    assert int(anyray.get(late[-1], timeout=DEADLINE)[0]) == len(nodes)
    ready, _ = anyray.wait(late, num_returns=len(late), timeout=DEADLINE)
    assert len(ready) == len(late)
    for i, ref in enumerate(refs, 1):  # and once they are done
        readers = [total.options(scheduling_strategy=on(node)).remote(ref, [ref]) for node in nodes]
        assert anyray.get(readers, timeout=DEADLINE) == [(i * size, i * size)] * len(nodes)
        value = anyray.get(ref, timeout=DEADLINE)
        assert value.shape == (size,) and int(value[0]) == i and int(value[-1]) == i


def test_nested_tasks_run_from_every_node(node_ids):
    @anyray.remote
    def child(x):
        return x * 2

    results = on_every_node(lambda: anyray.get(child.remote(21), timeout=DEADLINE))
    assert [value for _, value in results] == [42] * len(results)


def test_a_named_actor_is_reachable_from_every_node(node_ids):
    name = f"shared-counter-{uuid.uuid4().hex[:10]}"
    counter = Counter.options(name=name).remote(0)
    anyray.get(counter.get.remote())

    def bump(name):
        return anyray.get(anyray.get_actor(name).incr.remote(), timeout=DEADLINE)

    results = on_every_node(bump, name)
    assert sorted(value for _, value in results) == list(range(1, len(results) + 1))
    assert anyray.get(counter.get.remote()) == len(results)


def test_an_actor_handle_passed_to_every_node_keeps_call_order(node_ids):
    counter = Counter.remote(0)

    def ten_calls(handle):
        return anyray.get([handle.incr.remote() for _ in range(10)], timeout=DEADLINE)

    results = on_every_node(ten_calls, counter)
    for _, values in results:
        assert values == sorted(values)  # one caller's calls run in the order it made them
    assert anyray.get(counter.get.remote()) == 10 * len(results)


@anyray.remote(num_cpus=0)
def _fails(tag):
    raise ValueError(f"failed: {tag}")


def _fail_a_child(tag):
    """Run a failing task from here (it runs on this node: it needs no CPU) and swallow its error."""
    try:
        anyray.get(_fails.remote(tag))
    except ValueError:
        pass
    return tag


@pytest.mark.requires("timeline", "error_info")
def test_timeline_and_error_info_cover_every_node(node_ids):
    import os

    pids = {pid for _, pid in on_every_node(os.getpid)}
    spans = {e["pid"] for e in anyray.timeline() if e["name"].endswith("probe")}
    assert pids <= spans  # the probes that ran on the other nodes are listed too
    tag = uuid.uuid4().hex[:8]
    probes = on_every_node(_fail_a_child, tag)
    failures = [e for e in anyray.error_info() if tag in (e["message"] or "")]
    assert len(failures) == len(probes)  # a failure on every node, each listed once
