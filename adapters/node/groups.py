"""The node's side of placement groups beyond the shared ``PlacementGroups`` (common/placement_groups.py):
what removing a group does to the node's tasks and actors, and the requests a worker's runtime sends for
the ``PlacementGroupPort`` (``remote_groups.py``)."""

from __future__ import annotations

from anyray.exceptions import WorkerCrashedError

from ..common.placement_groups import group_id_of, removed_error
from . import messages as m
from .actors import kill_in_group
from .tasks import Task


class GroupRequests:
    """``lock``: the node's; ``tasks``, ``actors``: its parts."""

    def __init__(self, lock, tasks, actors):
        self._lock = lock
        self._tasks = tasks
        self._actors = actors

    def removed(self, group, queued: list) -> None:
        """``group`` was removed (its bundles are back): its queued tasks fail with
        ``TaskPlacementGroupRemoved``, its actors die and its running tasks' workers are killed."""
        error = removed_error(group.id)
        tasks = self._tasks
        for item in queued:
            if isinstance(item, Task):
                with self._lock:
                    if item.state != "queued":
                        continue
                    tasks.finish(item)
                tasks.fail(item.spec.returns, error)
        cause = (f"The actor is dead: its placement group {group.id.hex()} was removed (Destroying worker since its "
                 f"placement group was removed).")
        with self._lock:
            actors = [a for a in self._actors.actors.values() if a.state != "dead"
                      and group_id_of(a.spec.options.get("scheduling_strategy")) == group.id]
        for actor in actors:
            kill_in_group(self._actors, actor, cause)
        with self._lock:
            running = [t for t in tasks.tasks.values()
                       if t.queues is not None and t.queues.group is group and t.state == "running"]
        for task in dict.fromkeys(running):
            with self._lock:
                if task.state != "running" or task.cancelled:
                    continue
                task.cancelled = True
                worker = task.worker
                worker.retiring = True
            tasks.fail(task.spec.returns, WorkerCrashedError(
                f"The worker running {task.spec.name} was killed: its placement group {group.id.hex()} was "
                f"removed."))
            worker.handle.kill()

    def serve(self, groups_of):
        """The handler of the ``placement_group`` request (``messages.GroupOp``); ``groups_of()`` gives the
        node's ``seams.groups``."""

        def handler(worker, rid: int, args):
            request = m.GroupOp._make(args)
            op, groups = request.op, groups_of()
            if op == "create":
                job = worker.job if worker is not None else None
                return groups.create(request.spec, job[0] if job else None)
            if op == "remove":
                return groups.remove(request.group_id)
            if op == "table":
                return groups.table(request.group_id)
            if op == "find":
                return groups.find(request.name, request.namespace)
            raise ValueError(f"Unknown placement group request {op!r}.")

        return handler
