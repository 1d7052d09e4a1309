"""The node's request handlers (``adapters/node/handlers.py``) with no processes: a real store, pool and
queues, and workers that only record what is sent to them (``tests/node_parts.py``)."""

from __future__ import annotations

import pytest
from node_parts import NodeParts

from anyray import ids
from anyray.adapters.node import protocol as p
from anyray.exceptions import GetTimeoutError
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor, TaskSpec


@pytest.fixture
def node():
    parts = NodeParts({"CPU": 2.0})
    yield parts
    parts.close()


def _running_worker(node):
    """A worker that runs a task (holding one CPU), as the requests a task makes come from one."""
    spec = TaskSpec(task_id=ids.new_id(), function=FunctionDescriptor(b"f" * 16, "f", lambda: None),
                    args=SerializedObject(b"args"), deps=[], returns=[ObjectRef(ids.new_id())],
                    resources={"CPU": 1.0}, options={"max_retries": 0, "retry_exceptions": False}, name="f")
    node.tasks.submit(spec)
    [(worker, _)] = node.workers.of(p.TASK)
    return worker


def test_an_unknown_request_is_answered_with_an_error(node):
    worker = node.workers.spawn()
    [(rid, ok, error)] = node.request(worker, 5, "no_such_op", None)
    assert (rid, ok) == (5, False) and isinstance(error, AttributeError)
    assert str(error) == "This node serves no request 'no_such_op'."


def test_a_registered_request_is_served_and_one_without_a_request_id_gets_no_answer(node):
    worker = node.workers.spawn()
    node.requests.register("echo", lambda worker, rid, args: args)
    assert node.request(worker, 1, "echo", "hello") == [(1, True, "hello")]
    assert node.request(worker, 0, "echo", "unanswered") == [(1, True, "hello")]


def test_a_blocked_get_lends_its_cpus_and_is_answered_once_the_object_is_sealed(node):
    worker = _running_worker(node)
    ref = ObjectRef(ids.new_id())
    assert node.request(worker, 1, "get", ([ref._id], True, False)) == []
    assert node.pool.available()["CPU"] == 2.0  # the task's CPU is lent while it waits
    node.store.put(ref, SerializedObject(b"value"))
    [(rid, ok, [(oid, wire)])] = worker.handle.answers
    assert (rid, ok, oid, wire) == (1, True, ref._id, (b"value", []))
    assert node.pool.available()["CPU"] == 1.0  # and taken back


def test_a_get_that_must_not_wait_times_out_at_once(node):
    worker = node.workers.spawn()
    [(rid, ok, error)] = node.request(worker, 1, "get", ([ids.new_id()], True, True))
    assert not ok and isinstance(error, GetTimeoutError)
    assert str(error).startswith("get() timed out after 0 s: 1 of 1 objects are not ready.")


def test_an_abandoned_get_gives_its_cpus_back_at_once(node):
    worker = _running_worker(node)
    node.request(worker, 1, "get", ([ids.new_id()], True, False))
    assert node.pool.available()["CPU"] == 2.0
    node.request(worker, 0, "abandon", 1)
    assert node.pool.available()["CPU"] == 1.0


def test_wait_answers_what_is_ready(node):
    worker = node.workers.spawn()
    ready, waiting = ObjectRef(ids.new_id()), ObjectRef(ids.new_id())
    node.store.put(ready, SerializedObject(b"value"))
    assert node.request(worker, 1, "wait", ([ready._id, waiting._id], 1, True, False)) == [(1, True, [ready._id])]
    node.request(worker, 2, "wait", ([ready._id, waiting._id], 2, True, False))
    node.store.put(waiting, SerializedObject(b"value"))
    assert worker.handle.answers[-1] == (2, True, [ready._id, waiting._id])


def test_put_seals_and_the_node_reports_its_resources_and_names(node):
    worker = node.workers.spawn()
    oid = ids.new_id()
    node.request(worker, 0, "put", (oid, (b"put", []), []))
    assert node.store.entry(oid).data == b"put"
    node.request(worker, 1, "resources", "total")
    node.request(worker, 2, "list_named", None)
    assert worker.handle.answers == [(1, True, {"CPU": 2.0}), (2, True, [])]
