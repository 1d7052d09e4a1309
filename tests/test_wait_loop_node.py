"""Wait loops in worker processes, whose ready index the node keeps (``wait_watches.py``): a loop whose
index the node let go (more loops at once on one connection than it keeps) still gets its answer, and
a loop in a task sees the results of the tasks it waits for as they come."""

from __future__ import annotations

import time

import pytest

import anyray
from anyray.adapters.node.wait_watches import MAX_PER_CONNECTION


@pytest.fixture
def runtime():
    anyray.shutdown()  # a runtime another test module left (the conformance suite's shared one)
    anyray.init(backend="multiprocess", num_cpus=2)
    yield
    anyray.shutdown()


@anyray.remote
def slow(value, seconds):
    time.sleep(seconds)
    return value


@anyray.remote
def loops_past_what_the_node_keeps(loops):
    late = slow.remote("late", 1.0)
    ready, first = anyray.wait([anyray.put(0), late], num_returns=1, timeout=30)
    assert anyray.get(ready) == [0] and first == [late]
    ready, first = anyray.wait(first, num_returns=1, timeout=0)  # the node keeps its index from here
    assert ready == [] and first == [late]
    others = []
    for i in range(loops):  # each its own index on the node: the first one's is let go
        pending = slow.remote(i, 0.5)
        _, rest = anyray.wait([anyray.put(i), pending], num_returns=1, timeout=30)
        assert rest == [pending]
        _, rest = anyray.wait(rest, num_returns=1, timeout=0)  # its index, on the node
        others.append(rest)
    ready, left = anyray.wait(first, num_returns=1, timeout=60)
    assert ready == [late] and left == []
    return anyray.get(ready[0]), sorted(anyray.get(anyray.wait(rest, num_returns=1, timeout=60)[0][0])
                                        for rest in others)


def test_a_loop_whose_index_the_node_let_go_still_gets_its_answer(runtime):
    loops = MAX_PER_CONNECTION + 4
    assert anyray.get(loops_past_what_the_node_keeps.remote(loops), timeout=120) == ("late", list(range(loops)))


@anyray.remote
def wait_loop_in_a_task(n):
    refs = [slow.remote(i, 0.01) for i in range(n)]
    seen = []
    while refs:
        ready, refs = anyray.wait(refs, num_returns=1, timeout=60)
        seen += anyray.get(ready)
    return sorted(seen)


def test_a_wait_loop_in_a_task_hands_out_every_result_once(runtime):
    assert anyray.get(wait_loop_in_a_task.remote(50), timeout=120) == list(range(50))
