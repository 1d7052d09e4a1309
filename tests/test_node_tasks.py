"""The node's tasks part (``adapters/node/tasks.py``) with no processes: real store, pool and queues, and
workers that only record the messages sent to them (``tests/node_parts.py``)."""

from __future__ import annotations

import pytest
from node_parts import JOB, NodeParts

from anyray import ids
from anyray.adapters.node import messages as m
from anyray.exceptions import TaskCancelledError, WorkerCrashedError
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor, TaskSpec

FN = FunctionDescriptor(b"f" * 16, "f", lambda: None)


@pytest.fixture
def node():
    parts = NodeParts({"CPU": 2.0, "GPU": 1.0}, gpu_ids=[7])
    yield parts
    parts.close()


def _spec(*, deps=(), resources=None, parent=None, name="f", **options) -> TaskSpec:
    return TaskSpec(task_id=ids.new_id(), function=FN, args=SerializedObject(b"args"), deps=list(deps),
                    returns=[ObjectRef(ids.new_id())], resources={"CPU": 1.0} if resources is None else resources,
                    options={"max_retries": 0, "retry_exceptions": False, **options}, parent_task_id=parent,
                    name=name)


def _result(node, worker, spec, value=b"result") -> None:  # the bytes a worker sent, sealed as they are
    node.tasks.task_result(worker, spec.task_id, [m.Inline.pack(value, [])], [[]])


def test_a_task_goes_to_a_worker_once_its_dependencies_are_sealed(node):
    dep = ObjectRef(ids.new_id())
    spec = _spec(deps=[dep])
    node.tasks.submit(spec)
    assert node.workers.of(m.TASK) == []
    node.store.put(dep, SerializedObject(b"dep"))
    [(worker, task)] = node.workers.of(m.TASK)
    assert task.task_id == spec.task_id and task.dep_ids == [dep._id] and list(task.deps) == [dep._id]


def test_the_task_message_carries_the_gpus_of_its_lease_and_the_job_only_when_it_changes(node):
    first, second = _spec(resources={"CPU": 1.0, "GPU": 1.0}), _spec(resources={"CPU": 1.0, "GPU": 1.0})
    other_job = (b"other-job", "namespace")
    node.tasks.submit(first, job=other_job)
    [(worker, task)] = node.workers.of(m.TASK)
    assert task.gpu_ids == [7] and task.job == other_job and task.blob is not None  # the function's code, once
    _result(node, worker, first)
    node.tasks.submit(second, job=other_job)
    (again, task) = node.workers.of(m.TASK)[-1]
    assert again is worker and task.job is None and task.blob is None


def test_a_result_seals_the_returns_and_gives_the_lease_back(node):
    spec = _spec()
    node.tasks.submit(spec)
    [(worker, _)] = node.workers.of(m.TASK)
    assert node.pool.available()["CPU"] == 1.0
    _result(node, worker, spec)
    assert node.store.entry(spec.returns[0]._id).data == b"result"
    assert node.pool.available()["CPU"] == 2.0 and node.workers.idle == [worker]


def test_a_worker_is_retired_after_max_calls_tasks_of_a_function(node):
    spec = _spec(max_calls=1)
    node.tasks.submit(spec)
    [(worker, _)] = node.workers.of(m.TASK)
    _result(node, worker, spec)
    assert node.workers.exited == [worker] and worker not in node.workers.idle


def test_a_task_whose_worker_dies_runs_again_while_max_retries_allows_then_fails(node):
    spec = _spec(max_retries=1)
    node.tasks.submit(spec)
    [(worker, _)] = node.workers.of(m.TASK)
    worker.handle.died(-9)
    node.tasks.worker_lost(worker.task, worker.handle)
    assert len(node.workers.of(m.TASK)) == 2
    (worker, _) = node.workers.of(m.TASK)[-1]
    worker.handle.died(-9)
    node.tasks.worker_lost(worker.task, worker.handle)
    failure = node.value(spec.returns[0])
    assert isinstance(failure.error, WorkerCrashedError)
    assert str(failure.error) == (f"The worker running f (pid {worker.handle.pid}) died: killed by SIGKILL, on each "
                                  f"of 2 attempts. Raise max_retries to retry it more often.")
    assert node.pool.available()["CPU"] == 2.0


def test_a_task_cancelled_while_it_waits_fails_with_task_cancelled(node):
    dep = ObjectRef(ids.new_id())
    spec = _spec(deps=[dep])
    node.tasks.submit(spec)
    assert node.tasks.cancel(spec.returns[0], force=False, recursive=False)
    assert isinstance(node.value(spec.returns[0]).error, TaskCancelledError)
    node.store.put(dep, SerializedObject(b"dep"))
    assert node.workers.of(m.TASK) == []  # it never runs


def test_a_recursive_cancel_reaches_the_tasks_the_cancelled_one_submitted(node):
    parent = _spec(name="parent")
    node.tasks.submit(parent)
    child = _spec(deps=[ObjectRef(ids.new_id())], parent=parent.task_id, name="child")
    node.tasks.submit(child)
    node.tasks.cancel(parent.returns[0], force=False, recursive=True)
    [(_, body)] = node.workers.of(m.CANCEL)
    assert body == parent.task_id  # the running parent is asked to stop
    assert str(node.value(child.returns[0]).error) == "Task child was cancelled."


def test_a_plain_cancel_leaves_the_tasks_it_submitted_alone(node):
    parent = _spec(name="parent")
    node.tasks.submit(parent)
    child = _spec(deps=[ObjectRef(ids.new_id())], parent=parent.task_id, name="child")
    node.tasks.submit(child)
    node.tasks.cancel(parent.returns[0], force=False, recursive=False)
    assert node.store.entry(child.returns[0]._id) is None
    assert node.tasks.has_task(child.returns[0]._id)


def test_a_job_of_the_node_itself_is_the_default(node):
    spec = _spec()
    node.tasks.submit(spec)
    [(worker, task)] = node.workers.of(m.TASK)
    assert worker.job == JOB and task.job is None
