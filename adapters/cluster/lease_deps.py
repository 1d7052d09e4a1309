"""Tasks on a driver's leases that wait for their dependencies in the driver (``leases.py``), as Ray's
owner resolves a task's dependencies before it asks for a lease.

- A dependency that is here (a direct result, or what the driver put or read), small and without
  references inside, goes inline with the task.
- A task whose dependencies are still coming (direct results: ``DirectCalls.waiting`` has them) waits
  here, parked: ``waiting`` maps its own results to ``PARKED``, so a reader of them pumps every busy
  socket, and a task depending on them parks behind it. When its last dependency comes, it goes on, from
  the thread that read that answer: a chain of tasks so never takes the node's path.
- A dependency that comes to the node instead (a large result, or its task moved there when its worker
  died) sends the tasks parked on it through the node, and those parked on their results after them.
- A cancel of a parked task settles its results with ``TaskCancelledError``; what is parked on them goes
  on with that error as its argument's value, so it fails the same way, as in Ray.
"""

from __future__ import annotations

from anyray.exceptions import TaskCancelledError
from anyray.executor import serialize_failure
from anyray.specs import RemoteFailure

from ..node.store import to_wire
from .direct import ARGS_MAX


class _Parked:
    """What ``waiting`` maps the results of a parked task to."""

    __slots__ = ()
    leased = True
    parked = True
    closed = False


PARKED = _Parked()


class ParkedTasks:
    """The parked tasks of a driver's ``TaskLeases`` (``leases``); ``calls``: its ``DirectCalls``."""

    def __init__(self, calls, leases):
        self.calls = calls
        self.leases = leases
        self.parked: dict[bytes, list] = {}        # dependency id -> the parked tasks waiting for it
        self._missing: dict[bytes, set] = {}       # task id of a parked task -> its dependencies not here yet
        self._by_return: dict[bytes, object] = {}  # result id of a parked task -> its spec (for a cancel)

    def resolve(self, spec):
        """``spec``'s dependencies inline (id -> wire); ``PARKED`` if some are still coming (the task waits
        here for them); None if one is at the node, large, or holds references (the node's path)."""
        calls = self.calls
        cache, waiting = calls.cache, calls.waiting
        size = spec.args.nbytes
        objs: dict = {}
        missing: set = set()
        with calls.lock:
            for ref in spec.deps:
                oid = ref._id
                if oid in objs or oid in missing:
                    continue
                if oid in waiting:
                    missing.add(oid)
                    continue
                obj = cache.get(oid)
                if obj is None or obj.contained_refs:
                    return None
                size += obj.nbytes
                if size >= ARGS_MAX:
                    return None
                objs[oid] = obj
            if missing:
                self._missing[spec.task_id] = missing
                parked = self.parked
                for oid in missing:
                    parked.setdefault(oid, []).append(spec)
                for ref in spec.returns:
                    waiting[ref._id] = PARKED
                    self._by_return[ref._id] = spec
                return PARKED
        return {oid: to_wire(obj) for oid, obj in objs.items()}

    def specs(self) -> list:
        """The parked tasks (under the answers' lock)."""
        missing = self._missing
        return list({s.task_id: s for specs in self.parked.values() for s in specs if s.task_id in missing}.values())

    def ready(self, oid: bytes) -> None:
        """``oid`` left ``waiting`` (it came here, or is made at the node now): the parked tasks it was the
        last dependency of go on."""
        calls = self.calls
        todo = [oid]
        while todo:  # a loop, not recursion: a long chain moved to the node goes link by link
            oid = todo.pop()
            going = []
            with calls.lock:
                for spec in self.parked.pop(oid, ()):
                    missing = self._missing.get(spec.task_id)
                    if missing is None:
                        continue  # cancelled while parked
                    missing.discard(oid)
                    if not missing:
                        del self._missing[spec.task_id]
                        for ref in spec.returns:
                            self._by_return.pop(ref._id, None)
                        going.append(spec)
            for spec in going:
                todo.extend(self._go(spec))

    def _go(self, spec) -> list:
        """A parked task whose dependencies are all in: on a lease, or through the node. Returns the ids of
        its results if they are made at the node now (the tasks parked on them go there too)."""
        deps = self.resolve(spec)
        if deps is PARKED or (deps is not None and not self.calls.closed and self.leases.place(spec, deps)):
            return []
        self.to_node(spec)
        return [ref._id for ref in spec.returns]

    def to_node(self, spec, moved: bool = False) -> None:
        """Send ``spec`` through the node (what it depends on put there first): its results come from there.
        ``moved``: a task that was on a lease (its worker died): the tasks parked on its results follow it."""
        calls = self.calls
        calls.promote([ref._id for ref in spec.deps])
        try:
            self.leases.submit_node(spec)
        finally:
            with calls.lock:
                for ref in spec.returns:
                    calls.waiting.pop(ref._id, None)
                    for watch in calls.watches:
                        watch.moved(ref._id)
        if moved and self.parked:
            for ref in spec.returns:
                self.ready(ref._id)

    def cancel(self, oid: bytes) -> None:
        """Cancel the parked task returning ``oid`` (if it is still parked)."""
        calls = self.calls
        with calls.lock:
            spec = self._by_return.get(oid)
            if spec is None or self._missing.pop(spec.task_id, None) is None:
                return
            for ref in spec.returns:
                self._by_return.pop(ref._id, None)
        failure = to_wire(serialize_failure(RemoteFailure(TaskCancelledError(f"Task {spec.name} was cancelled."))))
        for ref in spec.returns:
            calls.settle(ref._id, failure)
