"""The object store of one node: small objects in the driver's memory, large ones in the shared arena.

Objects below ``inline_max`` bytes stay in the owner's table as bytes and
travel inside messages; larger ones are written once into the session's
arena, and every process of the node reads them there without a copy.

A range of the arena is reused only when nothing can read it any more: the
object is freed (no ObjectRef to it is alive) and no view of it is alive in
any process. Each reader holds one *pin* per object it has views of: the
owner's own ``get`` pins through the views it hands out (a finalizer on each
view unpins), and each worker holds the pins the scheduler takes when it
sends the worker an object's location, until the worker reports its views
gone (or dies).

With a spill directory (``spill.Spiller``), a full arena moves sealed objects nobody pins to disk, least
recently sealed or read first, and a read brings them back: every reader of an ``ArenaObject``'s range
takes it through ``pin_loc`` (or ``read_copy``), never ``entry.loc`` directly, as ``loc`` is None while
the object is on disk.

Messages carry objects in a *wire* form: ``(data, [buffer bytes...])`` for
inline objects, or the object's arena ``Location``.
"""

from __future__ import annotations

import collections
import threading
import weakref
from collections import OrderedDict

from anyray.exceptions import ObjectStoreFullError
from anyray.serialization import SerializedObject

from ..common.object_store import MemoryObjectStore
from .arena import Arena, Location
from .messages import Inline
from .spill import Spiller

INLINE_MAX = 100 * 1024  # objects at least this large go to shared memory (Ray's inline limit too)


class ArenaObject:
    """A stored object that lives in the arena. ``pins`` counts processes (and the owner's views) reading it.
    While spilled, ``loc`` is None and ``spilled`` is ``(file path, layout at offset 0)``."""

    __slots__ = ("loc", "contained_refs", "pins", "freed", "oid", "spilled", "size")

    def __init__(self, loc: Location, contained_refs=()):
        self.loc = loc
        self.contained_refs = contained_refs
        self.pins = 0
        self.freed = False
        self.oid = None  # set when sealed in the table (only those are spilled)
        self.spilled = None
        self.size = loc.nbytes

    @property
    def nbytes(self) -> int:
        return self.size


class _ViewGroup:
    """Calls ``release`` once every view made for one read of one object is gone."""

    __slots__ = ("left", "release")

    def __init__(self, left: int, release):
        self.left = left
        self.release = release

    def one_gone(self) -> None:  # a weakref finalizer: any thread, any time; release must only queue
        self.left -= 1
        if self.left == 0:
            self.release()


def pinned_views(arena: Arena, loc: Location, release) -> SerializedObject:
    """Read ``loc`` from ``arena``: buffers are read-only NumPy views of shared memory; ``release()`` runs
    once the last of them (and of every array built on them) is gone. With no buffers it runs now."""
    obj = arena.read(loc)
    if not obj.buffers:
        release()
        return obj
    import numpy as np  # only values with out-of-band buffers get here, and they come from NumPy or Arrow

    group = _ViewGroup(len(obj.buffers), release)
    views = []
    for view in obj.buffers:
        array = np.frombuffer(view, np.uint8)  # arrays unpickled from it keep it as their base
        weakref.finalize(array, group.one_gone)
        views.append(array)
    obj.buffers = views
    return obj


def to_wire(obj) -> tuple:
    """The inline wire form of a ``SerializedObject`` (buffers as bytes): a packed ``messages.Inline``."""
    return Inline.pack(obj.data, [b if type(b) is bytes else memoryview(b).tobytes() for b in obj.buffers])


class SharedObjectStore(MemoryObjectStore):
    """The owner's store: the table of every object of the node and the arena's allocator."""

    def __init__(self, arena: Arena, inline_max: int = INLINE_MAX, spill_root: str | None = None):
        """``spill_root``: the directory to spill under when the arena is full (None: raise instead)."""
        super().__init__(None)  # the arena bounds what takes memory; inline objects are small
        self.arena = arena
        self._lru: OrderedDict[bytes, ArenaObject] = OrderedDict()  # sealed, in memory; oldest use first
        self.spiller = Spiller(self, spill_root) if spill_root is not None else None
        self.inline_max = inline_max
        self._unpins: collections.deque[ArenaObject] = collections.deque()
        self._pin_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._free_listeners: list = []  # called with the ids freed (a cluster node lets go of other nodes' objects)
        self._gc = threading.Thread(target=self._unpin_loop, name="anyray-store-unpin", daemon=True)
        self._gc.start()

    # -- writing --------------------------------------------------------------
    def put(self, ref, obj: SerializedObject) -> None:
        if obj.nbytes < self.inline_max:
            self.seal(ref._id, obj.copy_buffers() if obj.buffers else obj)
            return
        entry = ArenaObject(self.place(obj), obj.contained_refs)
        if not self.seal(ref._id, entry):
            self._dropped([entry])

    def place(self, obj: SerializedObject) -> Location:
        """Write ``obj`` into a new arena range; on a full arena, take back what unpinned views left first."""
        self._apply_unpins()  # views dropped just now: their ranges can be reused (resident pages)
        grant = self.reserve(Location.of(obj).nbytes)
        try:
            return self.arena.write(grant, obj)
        except BaseException:
            self.arena.free(grant.offset)
            raise

    def reserve(self, nbytes: int):
        """A grant for a worker to write ``nbytes`` into (see ``Arena.reserve``); on a full arena, take back
        what unpinned views left, then spill objects nobody reads."""
        try:
            return self.arena.reserve(nbytes)
        except ObjectStoreFullError:
            self._apply_unpins()
            try:
                return self.arena.reserve(nbytes)
            except ObjectStoreFullError:
                if self.spiller is None:
                    raise
            return self.spiller.make_room(lambda: self.arena.reserve(nbytes), nbytes)

    def seal(self, oid: bytes, obj) -> bool:
        if not super().seal(oid, obj):
            return False
        if type(obj) is ArenaObject:
            with self._pin_lock:
                obj.oid = oid
                if not obj.freed:
                    self._lru[oid] = obj
        return True

    def forget_grant(self, offset: int) -> None:
        """A granted range its writer will never seal (the writer died): give it back."""
        self.arena.free(offset)

    def seal_wire(self, oid: bytes, wire, contained_refs: list) -> None:
        """Store an object a worker sent: inline bytes, or a ``Location`` it wrote into a granted range."""
        if type(wire) is Location:
            entry = ArenaObject(wire, contained_refs)
            if not self.seal(oid, entry):
                self._dropped([entry])
        else:
            data, buffers = wire  # an Inline (unpacked: this runs once per object)
            self.seal(oid, SerializedObject(data, buffers, contained_refs))

    def hold(self, obj: SerializedObject) -> ArenaObject:
        """Put ``obj`` in the arena outside the table (a task's large arguments); ``drop`` it when done."""
        entry = ArenaObject(self.place(obj), obj.contained_refs)
        entry.pins = 1
        return entry

    def drop(self, entry: ArenaObject) -> None:
        entry.freed = True
        self.unpin(entry)

    # -- reading --------------------------------------------------------------
    def get(self, refs, timeout):
        objs = super().get(refs, timeout)
        for i, obj in enumerate(objs):
            if type(obj) is ArenaObject:
                objs[i] = self._read(obj)
        return objs

    def _read(self, entry: ArenaObject) -> SerializedObject:
        try:
            loc = self.pin_loc(entry)
        except ObjectStoreFullError:  # spilled, and the arena cannot take it back now: read its file
            return self.read_copy(entry)
        return pinned_views(self.arena, loc, lambda: self._unpin_later(entry))

    def pin_loc(self, entry: ArenaObject) -> Location:
        """Pin ``entry`` for a reader and return where it lies, restoring it from disk first if it was
        spilled (which may spill others). The reader ``unpin``s when done."""
        with self._pin_lock:
            entry.pins += 1
            loc = entry.loc
            if entry.oid is not None and entry.oid in self._lru:
                self._lru.move_to_end(entry.oid)
        if loc is not None:
            return loc
        try:
            return self.spiller.restore(entry)
        except BaseException:
            self.unpin(entry)
            raise

    def read_copy(self, entry: ArenaObject) -> SerializedObject:
        """``entry``'s bytes copied into this process's memory (for a reader that cannot map the arena): a
        spilled object is read straight from its file, not restored."""
        self.pin(entry)
        try:
            if self.spiller is not None and entry.loc is None:
                obj = self.spiller.copy(entry)
                if obj is not None:
                    return obj
            obj = self.arena.read(entry.loc)
            return SerializedObject(bytes(obj.data), [memoryview(b).tobytes() for b in obj.buffers])
        finally:
            self.unpin(entry)

    def spilled_ids(self) -> list[bytes]:
        """The ids of the objects on disk now (the rest of the table is in memory)."""
        return [] if self.spiller is None else self.spiller.spilled_ids()

    def entry(self, oid: bytes):
        """The stored form of a sealed object (``SerializedObject`` or ``ArenaObject``), or None."""
        return self._objects.get(oid)

    def entries(self) -> list[tuple[bytes, object]]:
        """``(object id, stored form)`` of every sealed object, as a list taken now (``anyray list objects``)."""
        return list(self._objects.items())

    def pin(self, entry: ArenaObject) -> None:
        """Keep ``entry``'s range for a reader in another process, until ``unpin``."""
        with self._pin_lock:
            entry.pins += 1

    def unpin(self, entry: ArenaObject) -> None:
        with self._pin_lock:
            entry.pins -= 1
            if entry.pins or not entry.freed:
                return
        self._release_range(entry)

    def _unpin_later(self, entry: ArenaObject) -> None:
        # A finalizer may run in the middle of any code of this thread, allocator and locks included.
        self._unpins.append(entry)
        self._wake.set()

    def _unpin_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            self._apply_unpins()

    def _apply_unpins(self) -> None:
        while self._unpins:
            self.unpin(self._unpins.popleft())

    # -- freeing --------------------------------------------------------------
    def add_free_listener(self, fn) -> None:
        """Call ``fn(ids)`` with the ids of every ``free`` from now on (after the store has freed them)."""
        self._free_listeners.append(fn)

    def free(self, refs) -> None:
        ids = [r if isinstance(r, bytes) else r._id for r in refs]
        super().free(ids)
        for listener in self._free_listeners:
            listener(ids)

    def _dropped(self, objs: list) -> None:
        self._apply_unpins()
        for obj in objs:
            if type(obj) is ArenaObject:
                with self._pin_lock:
                    obj.freed = True
                    if obj.pins:
                        continue
                self._release_range(obj)

    def _release_range(self, entry: ArenaObject) -> None:
        entry.contained_refs = ()
        if entry.oid is not None:
            with self._pin_lock:
                self._lru.pop(entry.oid, None)
        if entry.loc is None:  # on disk
            if self.spiller is not None:
                self.spiller.discard(entry)
            return
        if not self._closed:
            self.arena.free(entry.loc.offset)

    def usage(self) -> dict:
        usage = super().usage()
        arena = self.arena.usage()
        usage["shared_bytes"] = arena["bytes"]
        usage["capacity"] = arena["capacity"]
        if self.spiller is not None:
            usage.update(self.spiller.usage())
        return usage

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if self.spiller is not None:
            self.spiller.close()
