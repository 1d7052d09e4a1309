"""An in-process ObjectStore: a dict of sealed objects and per-object waiters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence

from anyray.exceptions import GetTimeoutError, ObjectStoreFullError
from anyray.object_ref import ObjectRef
from anyray.ports.object_store import ObjectStore
from anyray.serialization import SerializedObject


class LocalObjectStore(ObjectStore):
    """Objects are copies (``copy_buffers``) so a value stored cannot change.

    Readers wait on one ``Event`` per call, registered on the ids they miss,
    so a seal wakes only those waiting for it.
    """

    def __init__(self, capacity: int | None):
        self._objects: dict[bytes, SerializedObject] = {}
        self._waiters: dict[bytes, list[Callable[[], None]]] = {}
        self._freed_early: set[bytes] = set()
        self._lock = threading.Lock()
        self._capacity = capacity
        self._used = 0

    def put(self, ref: ObjectRef, obj: SerializedObject) -> None:
        oid = ref._id
        obj = obj.copy_buffers() if obj.buffers else obj
        size = obj.nbytes
        with self._lock:
            if oid in self._objects:
                return
            if oid in self._freed_early:
                self._freed_early.discard(oid)
                return
            if self._capacity is not None and self._used + size > self._capacity:
                raise ObjectStoreFullError(
                    f"Cannot store an object of {size:,} bytes: the object store holds {len(self._objects):,} "
                    f"objects using {self._used:,} of {self._capacity:,} bytes. Objects stay while an ObjectRef "
                    f"to them is alive: drop refs you no longer need, or pass a larger object_store_memory to init().")
            self._objects[oid] = obj
            self._used += size
            wake = self._waiters.pop(oid, ())
        for callback in wake:
            callback()

    def on_sealed(self, refs: Sequence[ObjectRef], callback: Callable[[], None]) -> None:
        """Call ``callback`` once (on the sealing thread, or now) when every ref is sealed."""
        with self._lock:
            missing = [r._id for r in refs if r._id not in self._objects]
            if missing:
                remaining = [len(set(missing))]
                guard = threading.Lock()

                def one_sealed():
                    with guard:
                        remaining[0] -= 1
                        done = remaining[0] == 0
                    if done:
                        callback()

                for oid in set(missing):
                    self._waiters.setdefault(oid, []).append(one_sealed)
                return
        callback()

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[SerializedObject]:
        objects = self._objects
        try:
            return [objects[r._id] for r in refs]  # the common case: everything is there
        except KeyError:
            pass
        ready = self._wait_for(refs, len(set(refs)), timeout)
        if len(ready) < len(set(refs)):
            raise GetTimeoutError(f"get() timed out after {timeout} s: {len(set(refs)) - len(ready)} of "
                                  f"{len(refs)} objects are not ready. Raise the timeout, or use wait() to "
                                  f"take what is ready.")
        with self._lock:
            return [self._objects[r._id] for r in refs]

    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[ObjectRef]:
        return self._wait_for(refs, num_returns, timeout)

    def _wait_for(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[ObjectRef]:
        deadline = None if timeout is None else time.monotonic() + timeout
        event = threading.Event()
        with self._lock:
            ready = {r for r in refs if r._id in self._objects}
            if len(ready) >= num_returns or timeout == 0:
                return ready
            for r in refs:
                if r not in ready:
                    self._waiters.setdefault(r._id, []).append(event.set)
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                event.wait(left)
                event.clear()
                with self._lock:
                    ready = {r for r in refs if r._id in self._objects}
                if len(ready) >= num_returns:
                    return ready
            with self._lock:
                return {r for r in refs if r._id in self._objects}
        finally:
            with self._lock:
                for r in refs:
                    waiters = self._waiters.get(r._id)
                    if waiters and event.set in waiters:
                        waiters.remove(event.set)
                        if not waiters:
                            del self._waiters[r._id]

    def contains(self, ref: ObjectRef) -> bool:
        return ref._id in self._objects

    def free(self, refs: Iterable[ObjectRef | bytes]) -> None:
        with self._lock:
            for r in refs:
                oid = r if isinstance(r, bytes) else r._id
                obj = self._objects.pop(oid, None)
                if obj is not None:
                    self._used -= obj.nbytes
                elif oid not in self._waiters:
                    continue  # unknown id: nothing is coming for it
                else:
                    self._freed_early.add(oid)

    def usage(self) -> dict:
        with self._lock:
            return {"objects": len(self._objects), "bytes": self._used, "capacity": self._capacity}
