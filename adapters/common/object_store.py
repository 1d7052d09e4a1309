"""An in-memory table of sealed objects with per-object countdown waiters.

The local backend's whole store; the shared-memory store of the node
backends extends it (large objects then live in the arena, and the table
holds where).
"""

from __future__ import annotations

import _thread
import heapq
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence

from anyray.exceptions import GetTimeoutError, ObjectStoreFullError
from anyray.object_ref import ObjectRef
from anyray.ports.object_store import ObjectStore
from anyray.serialization import SerializedObject

_id_of = operator.attrgetter("_id")
SPIN_SECONDS = 100e-6  # how long wait() yields for a seal before it sleeps


_SLICE = 0.1  # seconds a blocked reader sleeps at a time (see _Waiter.block)


class _Waiter:
    """Fires once ``remaining`` of the ids it is registered on are sealed.

    ``sealed`` runs under the store's lock and only counts; ``fire`` runs
    after the lock is released: it wakes a blocked reader (a bare lock, the
    cheapest thing to block on) or calls a callback.
    """

    __slots__ = ("remaining", "_lock", "_callback")

    def __init__(self, remaining: int, callback: Callable[[], None] | None = None):
        self.remaining = remaining
        self._callback = callback
        self._lock = None
        if callback is None:
            self._lock = _thread.allocate_lock()
            self._lock.acquire()

    def sealed(self) -> bool:
        self.remaining -= 1
        return self.remaining == 0

    def fire(self) -> None:
        if self._callback is not None:
            self._callback()
        else:
            self._lock.release()

    def block(self, timeout: float | None) -> bool:
        """Wait until fired or past ``timeout``, in slices: an exception another thread raises in this
        one (the local backend's cancel of a task blocked in ``get``) lands only between C calls."""
        if self._lock.acquire(timeout=_SLICE if timeout is None or timeout > _SLICE else timeout):
            return True
        deadline = None if timeout is None else time.monotonic() + timeout - _SLICE
        while True:
            left = _SLICE if deadline is None else min(_SLICE, deadline - time.monotonic())
            if left <= 0:
                return False
            if self._lock.acquire(timeout=left):
                return True


class Watch:
    """The ready index of one ``wait`` loop (``anyray.waiting``): which positions of a list of ids are
    sealed and not yet taken, fed by the store's seals, so a loop of ``wait`` calls finds its next ready
    ref without scanning the list.

    ``sealed`` runs under the store's lock (a seal); ``take`` pops the smallest ready positions. While a
    taker blocks it is woken as a ``_Waiter`` is; a store whose results can be read by the waiting thread
    itself (``MemoryObjectStore.read_here``) has that thread read them instead of sleeping.
    """

    __slots__ = ("_store", "_index", "_ready", "_needed", "_lock", "_wake_fd", "_reader", "_callback",
                 "__weakref__")

    def __init__(self, store: MemoryObjectStore, ids: list[bytes]):
        self._store = store
        self._index = dict(zip(ids, range(len(ids))))  # id -> its position in the list, until sealed
        self._ready: list[int] = []  # a heap of the positions sealed and not yet taken
        self._needed = 0  # while a taker blocks: how many it waits for
        self._lock = None  # while a taker blocks: the bare lock it sleeps on
        self._wake_fd = None  # an eventfd that wakes a taker reading results itself (read_here)
        self._reader = None  # the thread id of that taker, while it reads
        self._callback = None  # what when_ready calls (instead of waking a taker)

    def sealed(self, oid: bytes) -> bool:
        """Under the store's lock: ``oid`` was sealed; True when that completes a blocked taker."""
        pos = self._index.pop(oid, None)
        if pos is None:
            return False
        heapq.heappush(self._ready, pos)
        if self._needed and len(self._ready) >= self._needed:
            self._needed = 0
            return True
        return False

    def fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()
            return
        lock = self._lock
        if lock is not None and lock.locked():
            try:
                lock.release()
            except RuntimeError:  # released by a seal that came just before
                pass
        elif self._reader is not None and self._reader != _thread.get_ident():
            try:
                os.eventfd_write(self._wake_fd, 1)
            except OSError:  # closed: the loop is over
                pass

    def ready_count(self) -> int:
        return len(self._ready)

    def take_ready(self) -> list[int]:
        """Every ready position not taken yet, in increasing order (does not wait)."""
        with self._store._lock:
            return self._pop(len(self._ready))

    def when_ready(self, k: int, callback) -> None:
        """Call ``callback()`` once (now, or on the sealing thread) when ``k`` positions are ready; it replaces
        the callback armed before, if any."""
        with self._store._lock:
            if len(self._ready) < k:
                self._needed = k
                self._callback = callback
                return
            self._callback = None
        callback()

    def _pop(self, k: int) -> list[int]:
        ready = self._ready
        return [heapq.heappop(ready) for _ in range(min(k, len(ready)))]

    def take(self, k: int, timeout: float | None) -> list[int]:
        """The ``k`` smallest ready positions, in increasing order, waiting up to ``timeout`` for them;
        fewer (those ready) past it."""
        store = self._store
        if len(self._ready) >= k or timeout == 0:
            with store._lock:
                return self._pop(k)
        deadline = None if timeout is None else time.monotonic() + timeout
        reader = store.read_here
        if reader is None and store.spin_until(lambda: len(self._ready) >= k):  # a reader spins itself
            with store._lock:
                return self._pop(k)
        while True:
            with store._lock:
                left = None if deadline is None else deadline - time.monotonic()
                if len(self._ready) >= k or (left is not None and left <= 0):
                    return self._pop(k)
                self._needed = k
                lock = None
                if reader is None:
                    lock = self._lock = _thread.allocate_lock()
                    lock.acquire()
                else:
                    if self._wake_fd is None:
                        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    self._reader = _thread.get_ident()
            try:
                if lock is None:
                    reader(lambda: len(self._ready) >= k, left, self._wake_fd)
                else:
                    lock.acquire(timeout=_SLICE if left is None else min(left, _SLICE))  # see _Waiter.block
            finally:
                with store._lock:
                    self._needed = 0
                    self._lock = self._reader = None

    def close(self) -> None:
        """The loop is over: seals need not come here any more."""
        with self._store._lock:
            self._store._watches.pop(id(self), None)
            fd, self._wake_fd = self._wake_fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        if self._wake_fd is not None:
            os.close(self._wake_fd)


class MemoryObjectStore(ObjectStore):
    """Objects are copies (``copy_buffers``) so a value stored cannot change.

    A reader that misses objects registers one countdown waiter on the ids
    it misses; each seal decrements the waiters of that id only, so a seal
    wakes exactly the readers it completes.
    """

    def __init__(self, capacity: int | None):
        self._objects: dict[bytes, SerializedObject] = {}
        self._waiters: dict[bytes, list[_Waiter]] = {}
        self._freed_early: set[bytes] = set()
        self._lock = threading.Lock()
        self._any_sealed = threading.Condition(self._lock)  # wait() re-checks on each seal
        self._wait_calls = 0  # wait() calls blocked on it
        self._seals = 0  # objects sealed so far
        self._capacity = capacity
        self._used = 0
        self._watches: dict[int, weakref.ref] = {}  # the ready indexes of the wait loops alive (Watch)
        # read_here(done, timeout, wake_fd): the waiting thread reads results itself until done() or
        # wake_fd is written (a node's store); None: it sleeps until a seal wakes it
        self.read_here = None

    def put(self, ref: ObjectRef, obj: SerializedObject) -> None:
        self.seal(ref._id, obj.copy_buffers() if obj.buffers else obj)

    def seal(self, oid: bytes, obj) -> bool:
        """Store ``obj`` (which the store owns from now on) under ``oid`` and wake its readers.

        Returns False, storing nothing, when ``oid`` is sealed already or was freed before it
        arrived; a subclass that stores other forms than ``SerializedObject`` (anything with
        ``nbytes``) releases what ``obj`` holds then."""
        size = obj.nbytes
        with self._lock:
            if oid in self._objects:
                return False
            if oid in self._freed_early:
                self._freed_early.discard(oid)
                return False
            if self._capacity is not None and self._used + size > self._capacity:
                raise ObjectStoreFullError(
                    f"Cannot store an object of {size:,} bytes: the object store holds {len(self._objects):,} "
                    f"objects using {self._used:,} of {self._capacity:,} bytes. Objects stay while an ObjectRef "
                    f"to them is alive: drop refs you no longer need, or pass a larger object_store_memory to init().")
            self._objects[oid] = obj
            self._used += size
            self._seals += 1
            if self._wait_calls:
                self._any_sealed.notify_all()
            waiters = self._waiters.pop(oid, None)
            done = [w for w in waiters if w.sealed()] if waiters else []
            if self._watches:
                for key, ref in list(self._watches.items()):
                    watch = ref()
                    if watch is None:  # its loop was dropped
                        del self._watches[key]
                    elif watch.sealed(oid):
                        done.append(watch)
        for waiter in done:
            waiter.fire()
        return True

    def _register(self, ids: set[bytes], needed: int, callback=None) -> _Waiter:
        """Under the lock: a waiter on the missing ``ids`` that fires after ``needed`` of them are sealed."""
        waiter = _Waiter(needed, callback)
        table = self._waiters
        for oid in ids:
            waiters = table.get(oid)
            if waiters is None:
                table[oid] = [waiter]
            else:
                waiters.append(waiter)
        return waiter

    def _unregister(self, waiter: _Waiter, ids: set[bytes]) -> None:
        with self._lock:
            for oid in ids:
                waiters = self._waiters.get(oid)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    if not waiters:
                        del self._waiters[oid]

    def on_sealed(self, refs: Sequence[ObjectRef], callback: Callable[[], None]) -> None:
        """Call ``callback`` once (on the sealing thread, or now) when every ref is sealed."""
        self.when_sealed({r._id for r in refs}, None, callback)

    def when_sealed(self, ids: set[bytes], needed: int | None, callback: Callable[[], None]) -> None:
        """Call ``callback`` once (on the sealing thread, or now) when ``needed`` of ``ids`` (all if None)
        are sealed. It never fires for ids that are never sealed."""
        with self._lock:
            missing = ids - self._objects.keys()
            needed = len(missing) if needed is None else needed - (len(ids) - len(missing))
            if needed > 0:
                self._register(missing, needed, callback)
                return
        callback()

    def ready(self, ids) -> list[bytes]:
        """Which of ``ids`` are sealed now."""
        objects = self._objects
        return [oid for oid in ids if oid in objects]

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[SerializedObject]:
        objects = self._objects
        try:
            return [objects[r._id] for r in refs]  # the common case: everything is there
        except KeyError:
            pass
        with self._lock:
            missing = {r._id for r in refs} - objects.keys()
            waiter = self._register(missing, len(missing)) if missing and timeout != 0 else None
        fired = not missing
        if waiter is not None:
            try:
                fired = waiter.block(timeout)
            except BaseException:  # e.g. the task waiting here was cancelled
                self._unregister(waiter, missing)
                raise
        if not fired:
            if waiter is not None:
                self._unregister(waiter, missing)
            with self._lock:
                still = sum(oid not in objects for oid in missing)
            if still:
                raise GetTimeoutError(f"get() timed out after {timeout} s: {still} of {len(refs)} objects are "
                                      f"not ready. Raise the timeout, or use wait() to take what is ready.")
        with self._lock:
            return [objects[r._id] for r in refs]

    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[bytes]:
        """Re-checks on every seal instead of registering a waiter per id: a loop of
        ``wait(num_returns=1)`` over many refs then costs one C-level set intersection per seal."""
        ids = set(map(_id_of, refs))
        objects = self._objects
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                done = ids & objects.keys()
                if len(done) >= num_returns or timeout == 0:
                    return done
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return done
                if self._spin_for_seal():
                    continue
                self._wait_calls += 1
                try:
                    self._any_sealed.wait(_SLICE if left is None else min(left, _SLICE))  # see _Waiter.block
                finally:
                    self._wait_calls -= 1

    def watch(self, ids: list[bytes]) -> Watch:
        """A ready index over ``ids`` (unique), fed by seals from now on (``anyray.waiting``)."""
        watch = Watch(self, ids)
        with self._lock:
            index = watch._index
            sealed = [index.pop(oid) for oid in index.keys() & self._objects.keys()]
            heapq.heapify(sealed)
            watch._ready = sealed
            self._watches[id(watch)] = weakref.ref(watch)
        return watch

    def spin_until(self, done) -> bool:
        """Yield for up to ``SPIN_SECONDS`` until ``done()`` (as ``_spin_for_seal``, without the lock)."""
        deadline = time.perf_counter() + SPIN_SECONDS
        while not done():
            if time.perf_counter() >= deadline:
                return False
            time.sleep(0)
        return True

    def _spin_for_seal(self) -> bool:
        """Under the lock: let it go and yield for up to ``SPIN_SECONDS`` while no object is sealed. When
        results stream in (a ``wait`` loop), the next seal usually comes sooner than a sleeping thread
        would wake; returns whether one came (the lock is held again either way)."""
        seals = self._seals
        deadline = time.perf_counter() + SPIN_SECONDS
        self._lock.release()
        try:
            while self._seals == seals and time.perf_counter() < deadline:
                time.sleep(0)  # lets the sealing threads of this process run
        finally:
            self._lock.acquire()
        return self._seals != seals

    def entries(self) -> list[tuple[bytes, SerializedObject]]:
        """(id, object) of every object stored now (``anyray.util.state.list_objects``)."""
        with self._lock:
            return list(self._objects.items())

    def count(self) -> int:
        """How many objects are stored."""
        return len(self._objects)

    def contains(self, ref: ObjectRef) -> bool:
        return ref._id in self._objects

    def free(self, refs: Iterable[ObjectRef | bytes]) -> None:
        dropped = []
        with self._lock:
            for r in refs:
                oid = r if isinstance(r, bytes) else r._id
                obj = self._objects.pop(oid, None)
                if obj is not None:
                    self._used -= obj.nbytes
                    dropped.append(obj)
                elif oid in self._waiters:
                    self._freed_early.add(oid)
        if dropped:
            self._dropped(dropped)

    def _dropped(self, objs: list) -> None:
        """Objects just freed (outside the lock): a subclass releases what they hold."""

    def usage(self) -> dict:
        with self._lock:
            return {"objects": len(self._objects), "bytes": self._used, "capacity": self._capacity}
