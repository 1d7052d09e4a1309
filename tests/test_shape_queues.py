"""The shape queues every built-in scheduler waits work in (``adapters/common/queues.py``), with no
processes: a real ``ResourcePool``, the scheduler's kind of re-entrant lock, and tasks that only carry
what the queues read (their state)."""

from __future__ import annotations

import threading

from anyray import ids
from anyray.adapters.common.object_store import MemoryObjectStore
from anyray.adapters.common.queues import ShapeQueues, Siblings, admit
from anyray.adapters.common.resources import ResourcePool
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor, TaskSpec


class _Task:
    def __init__(self, name: str, demand: dict):
        self.name, self.state = name, "queued"
        self.shape = tuple(sorted(demand.items()))


class _Node:
    """Queues over a pool, recording what they start (a task runs until the test ends it)."""

    def __init__(self, total: dict):
        self.pool = ResourcePool(total, [])
        self.started: list = []
        self.lock = threading.RLock()
        self.queues = ShapeQueues(self.lock, self.pool, lambda task, lease: self.started.append((task, lease)))

    def queue(self, task: _Task) -> _Task:
        self.queues.push(task.shape, task)
        return task


def test_work_of_one_shape_starts_first_in_first_out_as_resources_free():
    node = _Node({"CPU": 1.0})
    first, second, third = (node.queue(_Task(n, {"CPU": 1.0})) for n in ("first", "second", "third"))
    node.queues.dispatch()
    assert [t for t, _ in node.started] == [first]
    node.queues.release(node.started[-1][1])
    assert [t for t, _ in node.started] == [first, second]
    node.queues.release(node.started[-1][1])
    assert [t for t, _ in node.started] == [first, second, third]


def test_a_head_that_does_not_fit_blocks_only_its_own_shape():
    node = _Node({"CPU": 1.0})
    node.queue(_Task("big", {"CPU": 2.0}))
    behind = node.queue(_Task("behind big", {"CPU": 2.0}))
    small = node.queue(_Task("small", {"CPU": 1.0}))
    node.queues.dispatch()
    assert [t for t, _ in node.started] == [small]
    assert behind in node.queues.queues[behind.shape]


def test_a_freed_lease_goes_to_the_next_task_of_its_shape_only_while_no_other_shape_waits():
    node = _Node({"CPU": 2.0})
    lease = node.pool.acquire({"CPU": 1.0})
    mine = node.queue(_Task("mine", {"CPU": 1.0}))
    with node.lock:
        assert node.queues.next_queued(mine.shape, lease) is mine
    node.queue(_Task("again", {"CPU": 1.0}))
    node.queue(_Task("other shape", {"CPU": 0.5}))
    with node.lock:
        assert node.queues.next_queued(mine.shape, lease) is None  # fairness: the lease goes back instead


def test_a_lease_whose_cpus_are_lent_is_not_reused():
    node = _Node({"CPU": 2.0})
    lease = node.pool.acquire({"CPU": 1.0})
    task = node.queue(_Task("waiting", {"CPU": 1.0}))
    node.pool.lend_cpus(lease)
    with node.lock:
        assert node.queues.next_queued(task.shape, lease) is None
    node.pool.reclaim_cpus(lease)
    with node.lock:
        assert node.queues.next_queued(task.shape, lease) is task


def test_a_task_cancelled_while_queued_is_dropped_not_reused():
    node = _Node({"CPU": 2.0})
    lease = node.pool.acquire({"CPU": 1.0})
    cancelled = node.queue(_Task("cancelled", {"CPU": 1.0}))
    live = node.queue(_Task("live", {"CPU": 1.0}))
    cancelled.state = "done"
    with node.lock:
        assert node.queues.next_queued(live.shape, lease) is live
    assert not node.queues.queues[live.shape]


def test_waiting_work_given_as_a_callable_gets_its_lease_and_a_task_retried_goes_first():
    node = _Node({"CPU": 1.0})
    leases = []
    node.queues.enqueue({"CPU": 1.0}, leases.append)
    assert len(leases) == 1 and leases[0].demand == {"CPU": 1.0}
    node.queue(_Task("queued", {"CPU": 1.0}))
    retried = _Task("retried", {"CPU": 1.0})
    with node.lock:
        node.queues.push_front(retried.shape, retried)
    node.queues.release(leases[0])
    assert [t.name for t, _ in node.started] == ["retried"]


def _spec(deps) -> TaskSpec:
    return TaskSpec(task_id=ids.new_id(), function=FunctionDescriptor(b"f" * 16, "f", None),
                    args=SerializedObject(b""), deps=deps, returns=[ObjectRef(ids.new_id())], resources={"CPU": 1.0},
                    options={}, parent_task_id=b"parent", name="f")


def test_admit_tracks_a_task_and_hands_it_on_once_its_dependencies_are_sealed():
    store = MemoryObjectStore(None)
    dep = ObjectRef(ids.new_id())
    task = _Task("t", {"CPU": 1.0})
    task.spec = _spec([dep])
    tasks, children, ready = {}, {}, []
    admit(task, tasks, children, threading.RLock(), store, ready.append)
    assert tasks == {task.spec.returns[0]._id: task} and list(children) == [b"parent"]
    assert list(children[b"parent"]) == [task]
    assert ready == []
    store.put(dep, SerializedObject(b"x"))
    assert ready == [task]


def test_a_parents_children_keep_their_order_and_each_leaves_without_shifting_the_others():
    """Recursive cancel walks a parent's children in submission order; each finishing child leaves in O(1)
    (a parent with 10^5 children no longer pays a list shift per finished child)."""
    store = MemoryObjectStore(None)
    tasks, children = {}, {}
    kids = []
    for i in range(5):
        kid = _Task(f"k{i}", {"CPU": 1.0})
        kid.spec = _spec([])
        admit(kid, tasks, children, threading.RLock(), store, lambda t: None)
        kids.append(kid)
    siblings = children[b"parent"]
    assert type(siblings) is Siblings and list(siblings) == kids
    siblings.remove(kids[2])
    assert kids[2] not in siblings and list(siblings) == kids[:2] + kids[3:]
    siblings.append(kids[2])
    assert list(siblings)[-1] is kids[2] and len(siblings) == 5
