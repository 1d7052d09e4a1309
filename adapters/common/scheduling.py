"""The scheduling rules the built-in schedulers share: FIFO queues per demand shape, infeasible-demand
warnings, named actors in the metadata store, and the resources of one node.

Work waits in one FIFO per demand shape: when the head of a queue does not
fit, nothing behind it (same demand) can, so dispatch stays O(shapes). A
queue entry is a task object, started by the subclass's ``_start(task,
lease)``, or a callable ``start(lease)`` (an actor waiting for its
resources).
"""

from __future__ import annotations

import collections
import threading
from abc import abstractmethod
from collections.abc import Callable

from anyray.policy import Feasibility, missing
from anyray.ports.scheduler import Scheduler

from .names import NamedActors
from .resources import NodeResources, ResourcePool


class QueueScheduler(Scheduler):
    def __init__(self, metadata, events, pool: ResourcePool):
        self._metadata = metadata
        self.events = events
        self._resources = pool
        self._lock = threading.RLock()
        self._queues: dict[tuple, collections.deque] = {}
        self.feasibility = Feasibility(lambda: [pool.total()], self._infeasible_text)
        self.resource_view = NodeResources(pool)  # what cluster_resources(), available_resources() and nodes() read
        self.names = NamedActors(metadata, self.get_named_actor)

    @abstractmethod
    def _start(self, task, lease) -> None:
        """Run ``task``, whose resources ``lease`` now holds."""

    @abstractmethod
    def ready(self, task) -> None:
        """``task``'s dependencies are sealed: queue it for its resources."""

    def _admit(self, task, tasks: dict, children: dict, store) -> None:
        """Track a new task by its return ids (``tasks``) and its parent (``children``, for recursive
        cancel), and hand it to ``ready`` once its dependencies are sealed in ``store``."""
        spec = task.spec
        self._check_feasible(spec.function.function_id, spec.name, spec.resources, task.shape)
        with self._lock:
            for ref in spec.returns:
                tasks[ref._id] = task
            if spec.parent_task_id is not None:
                children.setdefault(spec.parent_task_id, []).append(task)
        if spec.deps:
            store.on_sealed(spec.deps, lambda: self.ready(task))
        else:
            self.ready(task)

    # -- queues ---------------------------------------------------------------
    def _check_feasible(self, key: bytes, name: str, demand: dict, shape: tuple | None = None) -> None:
        """Warn once per ``key``, at the user's ``.remote()`` line, when this node could never give ``demand``."""
        self.feasibility.check(key, name, demand, shape)

    def _infeasible_text(self, name: str, demand: dict, totals: list[dict]) -> str:
        lacking = missing(demand, totals[0])
        return (f"{name} needs {lacking} but this machine has {self._resources.describe_total(lacking)}; "
                f"it will wait until those resources exist (pass them to init(num_gpus=..., resources=...)).")

    def enqueue(self, demand: dict, start: Callable[[object], None]) -> None:
        """Call ``start(lease)`` once ``demand`` fits; FIFO among work of the same demand."""
        self._queue_of(tuple(sorted(demand.items())), start)
        self._dispatch()

    def _queue_of(self, shape: tuple, item) -> None:
        with self._lock:
            queue = self._queues.get(shape)
            if queue is None:
                queue = self._queues[shape] = collections.deque()
            queue.append(item)

    def _dispatch(self) -> None:
        to_start = []
        with self._lock:
            for shape, queue in self._queues.items():
                demand = None
                while queue:
                    demand = demand if demand is not None else dict(shape)
                    lease = self._resources.acquire(demand)
                    if lease is None:
                        break
                    to_start.append((queue.popleft(), lease))
        for start, lease in to_start:
            if callable(start):
                start(lease)
            else:
                self._start(start, lease)

    def _next_queued(self, shape: tuple, lease):
        """Under the lock: the next queued task of ``shape`` to run on ``lease``, just freed by a task of
        that shape; None when work of another shape waits (fairness), the lease's CPUs are lent, or
        nothing queued is a task."""
        queue = self._queues.get(shape)
        while queue and not callable(queue[0]) and not lease.cpus_lent and \
                (len(self._queues) == 1 or all(not q for s, q in self._queues.items() if s != shape)):
            task = queue.popleft()
            if task.state == "queued":  # else cancelled while queued: drop it
                return task
        return None

    def release(self, lease) -> None:
        self._resources.release(lease)
        self._dispatch()

    def list_named_actors(self, namespace):
        return self.names.list(namespace)

    # -- cluster state -------------------------------------------------------------
    def cluster_resources(self) -> dict[str, float]:
        return self.resource_view.cluster_resources()

    def available_resources(self) -> dict[str, float]:
        return self.resource_view.available_resources()

    def nodes(self) -> list[dict]:
        return self.resource_view.nodes()
