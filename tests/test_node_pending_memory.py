"""What a pending task holds on a node, for tasks a driver in another process submits (``submit`` requests,
decoded one by one): the options and resources that every task of a function repeats are one copy, and
the demand shape one tuple, however many tasks wait (``adapters/node/interning.py``)."""

from __future__ import annotations

import pickle

import pytest
from node_parts import NodeParts

from anyray import ids
from anyray.adapters.node import messages as m
from anyray.adapters.node.interning import LastShared
from anyray.object_ref import ObjectRef

OPTIONS = {"num_gpus": 0, "memory": 0, "resources": {}, "name": None, "scheduling_strategy": None,
           "runtime_env": None, "num_returns": 1, "num_cpus": 1, "max_retries": 3, "retry_exceptions": False}


@pytest.fixture
def node():
    parts = NodeParts({"CPU": 1.0})
    yield parts
    parts.close()


def _submit(node, worker, fn_id: bytes, options: dict, resources: dict) -> bytes:
    """A ``submit`` as it arrives from another process: its dicts decoded afresh. The task's return id."""
    rid = ids.new_id()
    node.request(worker, 0, "submit", pickle.loads(pickle.dumps(m.Submit.pack(
        ids.new_id(), fn_id, "f", b"code" if fn_id else None, (b"args", []), [], [rid], resources, options,
        None, "f", []))))
    return rid


def test_pending_tasks_of_one_function_share_their_options_resources_and_shape(node):
    driver = node.workers.spawn()
    fn = b"f" * 16
    rids = [_submit(node, driver, fn, OPTIONS, {"CPU": 1.0}) for _ in range(5)]
    tasks = [node.tasks.tasks[r] for r in rids]
    assert [t.state for t in tasks[1:]] == ["queued"] * 4  # one CPU: the first runs, the others wait
    assert len({id(t.spec.options) for t in tasks}) == 1 and tasks[0].spec.options == OPTIONS
    assert len({id(t.spec.resources) for t in tasks}) == 1
    assert len({id(t.shape) for t in tasks}) == 1 and tasks[0].shape == (("CPU", 1.0),)


def test_a_task_whose_options_differ_keeps_its_own(node):
    driver = node.workers.spawn()
    fn = b"f" * 16
    first = node.tasks.tasks[_submit(node, driver, fn, OPTIONS, {"CPU": 1.0})]
    retried = node.tasks.tasks[_submit(node, driver, fn, dict(OPTIONS, max_retries=0), {"CPU": 1.0})]
    typed = node.tasks.tasks[_submit(node, driver, fn, dict(OPTIONS, retry_exceptions=0), {"CPU": 1.0})]
    assert retried.spec.options["max_retries"] == 0 and first.spec.options["max_retries"] == 3
    assert typed.spec.options["retry_exceptions"] == 0 and type(typed.spec.options["retry_exceptions"]) is int
    other_fn = node.tasks.tasks[_submit(node, driver, b"g" * 16, OPTIONS, {"CPU": 1.0})]
    assert other_fn.spec.options == OPTIONS


def test_last_shared_keeps_types_and_bounds_its_table():
    share = LastShared().share
    a = share("f", {"x": 1})
    assert share("f", {"x": 1}) is a
    flag = share("f", {"x": True})
    assert flag is not a and flag["x"] is True
    assert share("f", {"x": 1.0})["x"].__class__ is float
    table = LastShared()
    for i in range(5000):
        table.share(i, {"i": i})
    assert len(table._last) <= 4096


def test_full_gc_passes_wait_while_the_queue_is_long_and_come_back_when_it_is_short(node):
    """A full pass over 10^5..10^6 pending tasks stops the node for seconds (a cluster node then misses its
    heartbeats): past ``HIGH`` pending tasks the node's process skips them, under ``LOW`` tasks and stored
    objects it takes them back."""
    import gc

    from anyray.adapters.node import gc_guard

    before = gc.get_threshold()
    driver = node.workers.spawn()
    fn = b"f" * 16
    rids = [_submit(node, driver, fn, OPTIONS, {"CPU": 1.0}) for _ in range(gc_guard.HIGH + 1)]
    try:
        assert gc_guard.deferring() and gc.get_threshold()[2] > 10**9
        assert gc.get_threshold()[:2] == before[:2]
        for rid in rids[1:]:  # the first one runs
            node.tasks.cancel(ObjectRef(rid), False, False)
        assert len(node.tasks.tasks) == 1
        assert node.store.count() > gc_guard.LOW and gc_guard.deferring()  # their errors wait for the driver
        node.store.free(rids[1:])  # ... which dropped its refs
        node.tasks.cancel(ObjectRef(_submit(node, driver, fn, OPTIONS, {"CPU": 1.0})), False, False)
        assert not gc_guard.deferring() and gc.get_threshold() == before
    finally:
        gc_guard.queue_shrank(0)
