"""Lineage: the tasks this node handed to other nodes whose large results stay there, kept so a result lost
with its node is made again by running its task again (Ray's lineage reconstruction).

The node a task was submitted to stands for the task's owner (its driver or
worker). A result that came back small is sealed here; a large one stays in
the shared memory of the node that ran the task, held there for this node,
and is pulled here only when something here waits for it (then that node
lets it go: one copy, here, lost only with its owner; a result something
here already waits for when its task ends is read home at once, as a small
one is). For each task with such a result, this node keeps the task's
description (its spec, its arguments, the references they hold) while a
reference to one of those results lives here, and forgets it with the last
one (a free listener of the store's), or once the result is read here.

When the node holding the only copy dies (``lost``), the task is submitted
again with the same return ids, within its ``max_retries`` (runs again after
a node died under it and rebuilds count here; a worker crash retried on the
node that ran the task counts only there); arguments that
were lost with it are rebuilt the same way, since the resubmitted task waits
for them. What cannot be rebuilt gets Ray's error: a task with
``max_retries=0``, one that ran out of retries or whose description was
dropped to keep lineage under ``RAY_max_lineage_bytes``
(``ObjectReconstructionFailedError`` and its two older names); an object
whose owner lived on the dead node (a ``put`` there, or a task a worker
there submitted) gets ``OwnerDiedError``.

Only normal tasks' results stay remote: an actor call's results and a
generator's items are read home as they come (so they are never lost with
the node that made them).
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict

from anyray.exceptions import (
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
)
from anyray.object_ref import ObjectRef
from anyray.policy import allows_another
from anyray.runtime import current_counter

from ..node import messages as m
from ..node.arena import Location

MAX_BYTES_DEFAULT = 1 << 30  # Ray's RAY_max_lineage_bytes default: 1 GiB
ENTRY_OVERHEAD = 256  # what one kept description costs beyond its arguments, roughly
STREAMING = ("streaming", "dynamic")


def max_lineage_bytes() -> int:
    """``RAY_max_lineage_bytes`` (or ``ANYRAY_MAX_LINEAGE_BYTES``) from the node's environment."""
    for name in ("ANYRAY_MAX_LINEAGE_BYTES", "RAY_max_lineage_bytes"):
        value = os.environ.get(name)
        if value:
            try:
                return max(0, int(value))
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number of bytes; set it to an integer such as "
                                 f"{MAX_BYTES_DEFAULT}.") from None
    return MAX_BYTES_DEFAULT


class Entry:
    """One task's description, while a reference to one of its results kept elsewhere lives here."""

    __slots__ = ("spec", "held", "job", "return_ids", "live", "attempts", "nbytes", "reason", "rebuilding")

    def __init__(self, spec, held, job, return_ids, live: set, attempts: int, nbytes: int, reason):
        self.spec = spec  # a TaskSpec with no return refs (they would keep the results alive); None if dropped
        self.held = held  # its arguments in shared memory (pinned for this entry), or None
        self.job = job
        self.return_ids = return_ids
        self.live = live  # the ids kept on another node and still referenced here
        self.attempts = attempts  # runs after the first so far
        self.nbytes = nbytes
        self.reason = reason  # why it cannot be rebuilt (an ObjectReconstructionFailedError reason), or None
        self.rebuilding = False


class Lineage:
    """``lock``: the node's lock; ``objects``: the node's ``RemoteObjects`` (where objects live);
    ``tasks``: the node's tasks (resubmitting)."""

    def __init__(self, lock, store, tasks, objects, max_bytes: int | None = None):
        self._lock = lock
        self._store = store
        self._tasks = tasks
        self._objects = objects
        self.max_bytes = max_lineage_bytes() if max_bytes is None else max_bytes
        self._entries: dict[bytes, Entry] = {}  # by each return id kept elsewhere
        self._order: OrderedDict[int, Entry] = OrderedDict()  # entries with a description, oldest first
        self.nbytes = 0
        self._wanted: set[bytes] = set()  # results of tasks running elsewhere that something here waits for
        store.add_free_listener(self.freed)

    def __len__(self) -> int:
        return len(self._order)

    def owns(self, oid: bytes) -> bool:
        """Whether ``oid`` is a result this node keeps the lineage of (another node reads it through here)."""
        return oid in self._entries

    # -- a task handed on came back -----------------------------------------------------------------
    def keep(self, task, node_id: str, got) -> set:
        """``task``, handed to ``node_id``, finished: the ids of its results (``got``: packed
        ``GotWithRefs``) that stay there (held there for this node), recorded where they live. Those
        something here already waits for, and a rebuild's (what was lost was waited for), are not kept:
        they are read home now, as small ones are. Call before the task is finished here (its arguments
        are still held)."""
        spec = task.spec
        if spec.options.get("num_returns") in STREAMING:
            return set()
        large = {g.oid for g in map(m.GotWithRefs._make, got) if type(g.wire) is Location}
        if not large:
            return large
        with self._lock:
            previous = self._entries.get(next(iter(large)))
            if previous is not None and previous.rebuilding:
                previous.rebuilding = False
                home = large
            else:
                home = large & self._wanted
            kept = large - home
            for oid in kept:
                self._objects.keep_remote(oid, node_id)
            if kept:
                self._record(task, kept, previous)
            if home:
                self.freed(home)  # no description needed for what is read home
        return kept

    def _record(self, task, kept: set, previous: Entry | None) -> None:
        """Under the lock."""
        if previous is not None:  # a rebuild came back: the same description, its runs counted
            previous.attempts = max(previous.attempts, task.attempts)
            previous.live |= kept
            for oid in kept:
                self._entries[oid] = previous
            return
        spec = task.spec
        return_ids = tuple(r._id for r in spec.returns)
        if spec.options["max_retries"] == 0:
            entry = Entry(None, None, task.job, return_ids, set(kept), task.attempts, 0,
                          "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED")
        else:
            held = task.held
            if held is not None:
                self._store.pin(held)  # the task's end drops its own pin; this one is the lineage's
                nbytes = held.nbytes
            else:
                nbytes = spec.args.nbytes if spec.args is not None else 0
            entry = Entry(dataclasses.replace(spec, returns=[]), held, task.job, return_ids, set(kept),
                          task.attempts, nbytes + ENTRY_OVERHEAD, None)
            self._order[id(entry)] = entry
            self.nbytes += entry.nbytes
        for oid in kept:
            self._entries[oid] = entry
        while self.nbytes > self.max_bytes and self._order:
            _, oldest = self._order.popitem(last=False)
            self._drop(oldest, "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED")

    def _drop(self, entry: Entry, reason: str | None) -> None:
        """Under the lock: forget ``entry``'s description (and unpin its arguments)."""
        if entry.spec is None and entry.held is None:
            return
        self._order.pop(id(entry), None)
        self.nbytes -= entry.nbytes
        entry.spec = None
        entry.reason = reason
        held, entry.held = entry.held, None
        if held is not None:
            self._store.unpin(held)

    # -- something here waits --------------------------------------------------------------------------
    def want(self, ids) -> list[tuple[bytes, str]]:
        """A ``get``, ``wait`` or task here waits for ``ids``, which live nowhere known yet: those a task
        submitted here makes are pulled as soon as it finishes on another node (remembered whatever the task's
        state: one still waiting here for room on its node is handed on later). Returns those that came back
        meanwhile (``(id, node)``: pull them now)."""
        now = []
        tasks = self._tasks.tasks
        where = self._objects.remote
        with self._lock:
            for oid in ids:
                node_id = where.get(oid)
                if node_id is not None:
                    now.append((oid, node_id))
                    continue
                if oid in tasks:  # forwarded, or still waiting here for a node: it may be handed on later
                    self._wanted.add(oid)
        return now

    # -- lost ----------------------------------------------------------------------------------------------
    def lost(self, oid: bytes, node_id: str) -> BaseException | None:
        """The only copy of ``oid`` was on ``node_id``, which died: None when its task runs again (or already
        does), else the error ``oid`` is."""
        with self._lock:
            entry = self._entries.get(oid)
            if entry is None:
                return OwnerDiedError(
                    f"Object {oid.hex()} was lost: its owner (the driver or worker that made it with ray.put() "
                    f"or .remote()) was on node {node_id}, which died. Objects whose owner died cannot be "
                    f"rebuilt; return the value from a task submitted by a process that lives on.")
            if self._tasks.has_task(oid):  # already running again (another of its results was lost too)
                return None
            spec = entry.spec
            if spec is None:
                return self._cannot(oid, node_id, entry)
            retries = spec.options["max_retries"]
            if not allows_another(retries, entry.attempts):
                return ObjectReconstructionFailedMaxAttemptsExceededError(
                    f"Object {oid.hex()} was lost with node {node_id} and cannot be rebuilt: {spec.name} already "
                    f"ran {entry.attempts + 1} times (max_retries={retries}). Raise max_retries to rebuild it "
                    f"more often.", "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED")
            entry.attempts += 1
            entry.rebuilding = True
            held = entry.held
            if held is not None:
                self._store.pin(held)  # the resubmitted task's end drops this pin
            counter = current_counter()
            again = dataclasses.replace(spec, returns=[ObjectRef(i, None, counter) for i in entry.return_ids])
            attempts, job = entry.attempts, entry.job
        self._tasks.submit(again, held, job, attempts=attempts)
        return None

    @staticmethod
    def _cannot(oid: bytes, node_id: str, entry: Entry) -> BaseException:
        if entry.reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED":
            return ObjectReconstructionFailedLineageEvictedError(
                f"Object {oid.hex()} was lost with node {node_id} and cannot be rebuilt: the description of the "
                f"task that made it was dropped to keep lineage under RAY_max_lineage_bytes. Raise "
                f"RAY_max_lineage_bytes on the nodes to keep more.", entry.reason)
        return ObjectReconstructionFailedError(
            f"Object {oid.hex()} was lost with node {node_id} and cannot be rebuilt: the task that made it was "
            f"submitted with max_retries=0. Give it max_retries > 0 to have it re-run.", entry.reason)

    # -- references gone -----------------------------------------------------------------------------------
    def read_home(self, oid: bytes) -> None:
        """``oid`` was read here: its one copy is here now, its lineage no longer needed."""
        self.freed((oid,))

    def freed(self, ids) -> None:
        """The store freed ``ids``: descriptions no reference needs any more are forgotten."""
        if not self._entries and not self._wanted:
            return
        with self._lock:
            for oid in ids:
                self._wanted.discard(oid)
                entry = self._entries.pop(oid, None)
                if entry is None:
                    continue
                entry.live.discard(oid)
                if not entry.live:
                    self._drop(entry, None)
