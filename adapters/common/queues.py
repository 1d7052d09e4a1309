"""Work waiting for its resources: one FIFO per demand shape, shared by the built-in schedulers.

When the head of a queue does not fit, nothing behind it (same demand) can,
so dispatch stays O(shapes). A queue entry is a task object, started by the
owner's ``start(task, lease)``, or a callable ``start(lease)`` (an actor
waiting for its resources).
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from .resources import ResourcePool


class ShapeQueues:
    """The queues of one node. ``lock`` is the scheduler's (re-entrant) lock, which every queue change
    is made under; ``start_task(task, lease)`` runs a queued task once ``pool`` gave it its resources (the
    owner may set it once its task part exists)."""

    def __init__(self, lock, pool: ResourcePool, start_task: Callable[[object, object], None] | None):
        self._lock = lock
        self._pool = pool
        self.start_task = start_task
        self.queues: dict[tuple, collections.deque] = {}
        # Called first by each dispatch (a node's placement groups: place the pending ones, then start
        # the work queued in bundles), so that freed resources go to groups before plain work.
        self.before_dispatch: Callable[[], None] | None = None

    def enqueue(self, demand: dict, start: Callable[[object], None]) -> None:
        """Call ``start(lease)`` once ``demand`` fits; FIFO among work of the same demand."""
        self.push(tuple(sorted(demand.items())), start)
        self.dispatch()

    def push(self, shape: tuple, item) -> None:
        """Queue ``item`` (a task, or a callable ``start(lease)``) behind the work of its ``shape``."""
        with self._lock:
            queue = self.queues.get(shape)
            if queue is None:
                queue = self.queues[shape] = collections.deque()
            queue.append(item)

    def push_front(self, shape: tuple, task) -> None:
        """Under the lock: queue ``task`` (to run again) ahead of the work of its ``shape``."""
        self.queues.setdefault(shape, collections.deque()).appendleft(task)

    def dispatch(self) -> None:
        """Start the queued work whose resources are free now."""
        if self.before_dispatch is not None:
            self.before_dispatch()
        to_start = []
        with self._lock:
            for shape, queue in self.queues.items():
                demand = None
                while queue:
                    demand = demand if demand is not None else dict(shape)
                    lease = self._pool.acquire(demand)
                    if lease is None:
                        break
                    to_start.append((queue.popleft(), lease))
        for start, lease in to_start:
            if callable(start):
                start(lease)
            else:
                self.start_task(start, lease)

    def next_queued(self, shape: tuple, lease):
        """Under the lock: the next queued task of ``shape`` to run on ``lease``, just freed by a task of
        that shape; None when work of another shape waits (fairness), the lease's CPUs are lent, or
        nothing queued is a task."""
        queues = self.queues
        queue = queues.get(shape)
        while queue and not callable(queue[0]) and not lease.cpus_lent and \
                (len(queues) == 1 or all(not q for s, q in queues.items() if s != shape)):
            task = queue.popleft()
            if task.state == "queued":  # else cancelled while queued: drop it
                return task
        return None

    def release(self, lease) -> None:
        """Give ``lease``'s resources back and start what now fits."""
        self._pool.release(lease)
        self.dispatch()


class Siblings(dict):
    """The tasks one parent submitted, in order: a list's ``append``/``remove``/``in``/iteration, each O(1)
    (a parent that submits 10^5 children would otherwise shift the whole list as each one finishes)."""

    __slots__ = ()

    def append(self, task) -> None:
        self[task] = None

    def remove(self, task) -> None:
        del self[task]


def admit(task, tasks: dict, children: dict, lock, store, ready: Callable[[object], None]) -> bool:
    """Track a new task by its return ids (``tasks``) and its parent (``children``: parent id ->
    ``Siblings``, for recursive cancel).
    True when it is ready now (no dependencies): the caller starts it; else ``ready(task)`` is called
    once its dependencies are sealed in ``store``."""
    spec = task.spec
    with lock:
        for ref in spec.returns:
            tasks[ref._id] = task
        if spec.parent_task_id is not None:
            siblings = children.get(spec.parent_task_id)
            if siblings is None:
                siblings = children[spec.parent_task_id] = Siblings()
            siblings[task] = None
    if spec.deps:
        store.on_sealed(spec.deps, lambda: ready(task))
        return False
    return True
