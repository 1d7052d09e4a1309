"""The node's request handlers (``adapters/node/handlers.py``) with no processes: a real store, pool and
queues, and workers that only record what is sent to them (``tests/node_parts.py``)."""

from __future__ import annotations

import pytest
from node_parts import NodeParts

from anyray import ids
from anyray.adapters.node import messages as m
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
    [(worker, _)] = node.workers.of(m.TASK)
    return worker


def test_an_unknown_request_is_answered_with_an_error(node):
    worker = node.workers.spawn()
    [answer] = node.request(worker, 5, "no_such_op", None)
    assert (answer.rid, answer.ok) == (5, False) and isinstance(answer.value, AttributeError)
    assert str(answer.value) == "This node serves no request 'no_such_op'."


def test_a_registered_request_is_served_and_one_without_a_request_id_gets_no_answer(node):
    worker = node.workers.spawn()
    node.requests.register("echo", lambda worker, rid, args: args)
    assert node.request(worker, 1, "echo", "hello") == [m.Response(1, True, "hello")]
    assert node.request(worker, 0, "echo", "unanswered") == [m.Response(1, True, "hello")]


def test_a_blocked_get_lends_its_cpus_and_is_answered_once_the_object_is_sealed(node):
    worker = _running_worker(node)
    ref = ObjectRef(ids.new_id())
    assert node.request(worker, 1, "get", m.Get.pack([ref._id], blocking=True, now=False)) == []
    assert node.pool.available()["CPU"] == 2.0  # the task's CPU is lent while it waits
    node.store.put(ref, SerializedObject(b"value"))
    [answer] = worker.handle.answers
    [got] = [m.Got._make(row) for row in answer.value]
    assert (answer.rid, answer.ok, got.oid, m.Inline._make(got.wire)) == (1, True, ref._id, m.Inline(b"value", []))
    assert node.pool.available()["CPU"] == 1.0  # and taken back


def test_a_get_that_must_not_wait_times_out_at_once(node):
    worker = node.workers.spawn()
    [answer] = node.request(worker, 1, "get", m.Get.pack([ids.new_id()], blocking=True, now=True))
    assert not answer.ok and isinstance(answer.value, GetTimeoutError)
    assert str(answer.value).startswith("get() timed out after 0 s: 1 of 1 objects are not ready.")


def test_an_abandoned_get_gives_its_cpus_back_at_once(node):
    worker = _running_worker(node)
    node.request(worker, 1, "get", m.Get.pack([ids.new_id()], blocking=True, now=False))
    assert node.pool.available()["CPU"] == 2.0
    node.request(worker, 0, "abandon", 1)
    assert node.pool.available()["CPU"] == 1.0


def test_wait_answers_what_is_ready(node):
    worker = node.workers.spawn()
    ready, waiting = ObjectRef(ids.new_id()), ObjectRef(ids.new_id())
    node.store.put(ready, SerializedObject(b"value"))
    wait = m.Wait.pack([ready._id, waiting._id], num_returns=1, may_wait=True, blocking=False)
    assert node.request(worker, 1, "wait", wait) == [m.Response(1, True, [ready._id])]
    node.request(worker, 2, "wait", m.Wait.pack([ready._id, waiting._id], num_returns=2, may_wait=True, blocking=False))
    node.store.put(waiting, SerializedObject(b"value"))
    assert worker.handle.answers[-1] == m.Response(2, True, [ready._id, waiting._id])


def test_put_seals_and_the_node_reports_its_resources_and_names(node):
    worker = node.workers.spawn()
    oid = ids.new_id()
    node.request(worker, 0, "put", m.Put.pack(oid, m.Inline.pack(b"put", []), []))
    assert node.store.entry(oid).data == b"put"
    node.request(worker, 1, "resources", "total")
    node.request(worker, 2, "list_named", None)
    assert worker.handle.answers == [m.Response(1, True, {"CPU": 2.0}), m.Response(2, True, [])]
