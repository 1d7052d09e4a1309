"""One shared-memory file per node session, carved into object ranges by the driver.

The owner (the driver) creates ``<session>/arena`` sparse at the store's
capacity, maps it once, and is the only process that allocates: it hands out
64-byte-aligned ranges and takes them back. Any process of the session
attaches the file by path and maps it once: read-only for the zero-copy
views it gives out, and read-write as well when it writes objects into ranges
the owner granted it (a worker writing its task's results).

Freed ranges keep their pages and are reused first: writing into pages that
are already resident runs at memcpy speed, while the kernel must allocate and
zero a never-used page, which caps such writes at a few GB/s. Never-used
ranges are written with ``os.pwrite`` (no page faults through the mapping),
reused ones with a memcpy through the mapping, whose page-table entries each
writing process fills once per 64 KiB chunk (``MADV_POPULATE_WRITE``), after
which its writes there run at memcpy speed. When an allocation first
reaches into never-used space the owner ``posix_fallocate``s it, so a full
``/dev/shm`` raises :class:`ObjectStoreFullError` there, and never a SIGBUS
when a page is touched later.

This module does not count readers: ``free`` must only be called once no
process reads the range any more, because the range is handed out again and
overwritten. Keeping a range from reuse while views of it live is the job of
the store that uses the arena.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import pickle
import threading
from collections.abc import Callable
from typing import NamedTuple

from anyray.exceptions import ObjectStoreFullError
from anyray.serialization import SerializedObject

ALIGN = 64
_PWRITE_MAX = 1 << 30  # Linux writes at most 2 GiB - 4 KiB per call
_CHUNK = 1 << 16
_MADV_POPULATE_WRITE = 23  # Linux 5.14; the mmap module does not name it


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def _raw(buf) -> memoryview:
    """A flat byte view of an out-of-band buffer (a ``PickleBuffer``, NumPy array, bytes...)."""
    view = buf.raw() if isinstance(buf, pickle.PickleBuffer) else memoryview(buf)
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class Location(NamedTuple):
    """Where one object lies in the arena; small and picklable, so messages carry it.

    The pickle stream starts at ``offset``; each buffer follows at the next
    64-byte boundary, in order. ``nbytes`` is the size of the whole range.
    """

    offset: int
    data_len: int
    buffer_lens: tuple[int, ...]

    @classmethod
    def of(cls, obj: SerializedObject, offset: int = 0) -> Location:
        return cls(offset, len(obj.data), tuple(_raw(b).nbytes for b in obj.buffers))

    def spans(self) -> list[tuple[int, int]]:
        """``(start, length)`` of the pickle stream, then of each buffer, as absolute offsets."""
        spans, pos = [], self.offset
        for n in (self.data_len, *self.buffer_lens):
            spans.append((pos, n))
            pos += _aligned(n)
        return spans

    @property
    def nbytes(self) -> int:
        return sum(_aligned(n) for n in (self.data_len, *self.buffer_lens)) or ALIGN


class Grant(NamedTuple):
    """A range the owner allocated, as sent to the process that writes it.

    Bytes from ``fresh_from`` to the end of the range have never been written
    (the writer uses ``os.pwrite`` there); those before it are reused pages.
    It only chooses the faster way to write: every byte of a grant has pages.
    """

    offset: int
    nbytes: int
    fresh_from: int


class Allocator:
    """Best-fit allocation of 64-byte-aligned ranges in ``[0, capacity)``, owned by one process.

    Free ranges are kept sorted by address (to coalesce neighbours on
    ``free``) and by size (to find the best fit with a binary search). Space
    above ``high_water`` has never been handed out; it is used only when no
    freed range fits, so resident pages are reused first. Thread-safe.
    """

    def __init__(self, capacity: int, on_grow: Callable[[int, int], None] | None = None):
        """``on_grow(old, new)`` runs before ``high_water`` rises; if it raises, the allocation fails."""
        if capacity <= 0:
            raise ValueError(f"Arena capacity must be a positive number of bytes, got {capacity!r}.")
        self.capacity = capacity
        self.high_water = 0
        self.used = 0
        self._on_grow = on_grow
        self._starts: list[int] = []
        self._free: dict[int, int] = {}
        self._by_size: list[tuple[int, int]] = []
        self._live: dict[int, int] = {}
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        """Number of ranges allocated and not yet freed."""
        return len(self._live)

    def allocate(self, nbytes: int) -> int:
        """Return the offset of a free range of at least ``nbytes`` (rounded up to 64).

        Raises ``ObjectStoreFullError`` saying how much was asked and how
        much of the capacity is in use when no free range is large enough.
        """
        size = _aligned(max(nbytes, 1))
        with self._lock:
            i = bisect.bisect_left(self._by_size, (size, -1))
            if i < len(self._by_size):
                free_size, start = self._by_size[i]
                self._unlink(start)
                if free_size > size:
                    self._link(start + size, free_size - size)
            else:
                start = self.high_water
                last = self._starts[-1] if self._starts else None
                if last is not None and last + self._free[last] == self.high_water:
                    start = last  # extend the freed range that ends at the high-water mark
                end = start + size
                if end > self.capacity:
                    raise ObjectStoreFullError(self._full_message(nbytes))
                if self._on_grow is not None:
                    self._on_grow(self.high_water, end)
                if start != self.high_water:
                    self._unlink(start)
                self.high_water = end
            self._live[start] = size
            self.used += size
            return start

    def free(self, offset: int) -> None:
        """Give back the range at ``offset``; it may be handed out (and overwritten) at once.

        Call it only once no process reads the range. Raises ``ValueError``
        for an offset that is not allocated.
        """
        with self._lock:
            size = self._live.pop(offset, None)
            if size is None:
                raise ValueError(f"No allocated range starts at offset {offset} of the arena.")
            self.used -= size
            i = bisect.bisect_left(self._starts, offset)
            if i < len(self._starts) and self._starts[i] == offset + size:
                following = self._starts[i]
                size += self._free[following]
                self._unlink(following)
            if i > 0:
                prev = self._starts[i - 1]
                if prev + self._free[prev] == offset:
                    size += self._free[prev]
                    self._unlink(prev)
                    offset = prev
            self._link(offset, size)

    def size_of(self, offset: int) -> int:
        """The size of the allocated range at ``offset``."""
        return self._live[offset]

    def _link(self, start: int, size: int) -> None:
        bisect.insort(self._starts, start)
        bisect.insort(self._by_size, (size, start))
        self._free[start] = size

    def _unlink(self, start: int) -> None:
        size = self._free.pop(start)
        del self._starts[bisect.bisect_left(self._starts, start)]
        del self._by_size[bisect.bisect_left(self._by_size, (size, start))]

    def _full_message(self, nbytes: int) -> str:
        tail = self.capacity - self.high_water
        if self._starts and self._starts[-1] + self._free[self._starts[-1]] == self.high_water:
            tail += self._free[self._starts[-1]]
        largest = max([tail, *self._free.values()])
        return (
            f"Cannot store an object of {nbytes:,} bytes in shared memory: {self.used:,} of {self.capacity:,} "
            f"bytes are used by {len(self._live):,} objects (largest free range: {largest:,} bytes). Objects stay "
            "while an ObjectRef to them is alive: drop refs you no longer need, or pass a larger "
            "object_store_memory to init().")


class Arena:
    """A mapping of a session's arena file; ``create`` for the owner, ``attach`` for every other process.

    Reading (``view``, ``read``) works in every process. Writing (``write``)
    needs the owner or ``attach(path, writable=True)``, and only ever into a
    range the owner granted. Allocation (``reserve``, ``put``, ``free``,
    ``usage``) is the owner's alone.
    """

    def __init__(self, path: str, fd: int, capacity: int, writable: bool, allocator: Allocator | None):
        self.path = path
        self.capacity = capacity
        self.allocator = allocator
        self._fd = fd
        self._read_map = mmap.mmap(fd, capacity, access=mmap.ACCESS_READ)
        self._write_map = mmap.mmap(fd, capacity) if writable else None
        self._read_view = memoryview(self._read_map)
        self._write_array = None  # a NumPy view of the write mapping, made on the first copy through it
        self._populated = bytearray(-(-capacity // _CHUNK)) if writable else None
        self._can_populate = True

    @classmethod
    def create(cls, session, capacity: int) -> Arena:
        """Create ``session.file("arena")`` sparse at ``capacity`` bytes and own its allocator."""
        path = session.file("arena")
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, capacity)
            arena = cls(path, fd, capacity, True, None)
        except BaseException:
            os.close(fd)
            raise
        arena.allocator = Allocator(capacity, on_grow=arena._back)
        return arena

    @classmethod
    def attach(cls, path: str, writable: bool = False) -> Arena:
        """Map an existing arena; ``writable`` adds the read-write mapping a writer of granted ranges needs."""
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            return cls(path, fd, os.fstat(fd).st_size, writable, None)
        except BaseException:
            os.close(fd)
            raise

    def _allocator(self) -> Allocator:
        if self.allocator is None:
            raise PermissionError(f"Only the process that created {self.path} allocates and frees its ranges.")
        return self.allocator

    def _back(self, start: int, end: int) -> None:
        """Give never-used space real pages now, so a full /dev/shm fails here and not as a SIGBUS."""
        try:
            os.posix_fallocate(self._fd, start, end - start)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
                raise
            raise ObjectStoreFullError(
                f"Cannot store an object in shared memory: the file system of {self.path} has no room for "
                f"{end - start:,} more bytes ({start:,} of the arena's {self.capacity:,} bytes are in use or "
                "kept for reuse). Free memory on /dev/shm, or pass a smaller object_store_memory to init().") from exc

    def reserve(self, nbytes: int) -> Grant:
        """Owner only: allocate a range for ``nbytes`` and say which part has never been written."""
        allocator = self._allocator()
        old = allocator.high_water
        offset = allocator.allocate(nbytes)
        size = allocator.size_of(offset)
        return Grant(offset, size, min(max(offset, old), offset + size))

    def put(self, obj: SerializedObject) -> Location:
        """Owner only: allocate a range for ``obj``, write it, and return where it lies."""
        grant = self.reserve(Location.of(obj).nbytes)
        try:
            return self.write(grant, obj)
        except BaseException:
            self._allocator().free(grant.offset)
            raise

    def free(self, offset: int) -> None:
        """Owner only: see ``Allocator.free``; the range must not be read by any process any more."""
        self._allocator().free(offset)

    def usage(self) -> dict:
        """Owner only: ``{"objects": n, "bytes": used, "capacity": capacity, "high_water": ...}``."""
        a = self._allocator()
        return {"objects": a.count, "bytes": a.used, "capacity": a.capacity, "high_water": a.high_water}

    def write(self, grant: Grant, obj: SerializedObject) -> Location:
        """Copy ``obj``'s pickle stream and buffers into ``grant``'s range; return their ``Location``.

        The caller may reuse ``obj``'s buffers once this returns. Raises
        ``ValueError`` if ``obj`` does not fit in the grant. Ranges of
        different grants may be written concurrently, from any thread or process.
        """
        if self._write_map is None:
            raise PermissionError(f"This process attached {self.path} read-only; attach it with writable=True.")
        loc = Location.of(obj, grant.offset)
        if loc.nbytes > grant.nbytes:
            raise ValueError(f"An object of {loc.nbytes:,} bytes does not fit in a grant of {grant.nbytes:,} bytes.")
        for (start, _), src in zip(loc.spans(), [obj.data, *obj.buffers]):
            self._copy(start, _raw(src), grant.fresh_from)
        return loc

    def _copy(self, start: int, src: memoryview, fresh_from: int) -> None:
        n = src.nbytes
        split = min(max(fresh_from - start, 0), n)
        if split:
            self._populate(start, start + split)
            import numpy as np  # here, not at import: a worker that never copies never loads NumPy

            if self._write_array is None:
                self._write_array = np.frombuffer(self._write_map, np.uint8)
            np.copyto(self._write_array[start:start + split], np.frombuffer(src[:split], np.uint8))
        while split < n:  # never-used pages: pwrite skips the fault per page a mapping would take
            split += os.pwrite(self._fd, src[split:split + _PWRITE_MAX], start + split)

    def _populate(self, start: int, end: int) -> None:
        """Map this process's page-table entries for a reused range in one call, once per process.

        A memcpy into pages that are resident but not yet mapped here takes a
        fault per page (about 3 GB/s); once mapped it runs at memcpy speed.
        Only whole 64 KiB chunks are tracked; the few pages at the edges fault in.
        """
        first, last = -(-start // _CHUNK), end // _CHUNK
        if not self._can_populate or last <= first or self._populated.find(0, first, last) < 0:
            return
        try:
            self._write_map.madvise(_MADV_POPULATE_WRITE, first * _CHUNK, (last - first) * _CHUNK)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._can_populate = False  # an older kernel: pages fault in as they are written
        self._populated[first:last] = b"\x01" * (last - first)

    def receive_view(self, offset: int, nbytes: int) -> memoryview:
        """A writable view of ``nbytes`` at ``offset`` of a granted range, its pages mapped in, for
        reading an object from a socket straight into shared memory."""
        if self._write_map is None:
            raise PermissionError(f"This process attached {self.path} read-only; attach it with writable=True.")
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"Range [{offset}, {offset + nbytes}) lies outside the arena of {self.capacity} bytes.")
        self._populate(offset, offset + nbytes)
        return memoryview(self._write_map)[offset:offset + nbytes]

    def view(self, offset: int, nbytes: int) -> memoryview:
        """A zero-copy, read-only view of ``nbytes`` at ``offset``; valid until that range is freed."""
        if offset < 0 or offset + nbytes > self.capacity:
            raise ValueError(f"Range [{offset}, {offset + nbytes}) lies outside the arena of {self.capacity} bytes.")
        return self._read_view[offset:offset + nbytes]

    def read(self, loc: Location) -> SerializedObject:
        """The object at ``loc``: the pickle stream copied out, the buffers as zero-copy read-only views.

        Arrays deserialized from it are read-only and share the arena's
        memory. ``contained_refs`` is empty: the store keeps those itself.
        """
        spans = loc.spans()
        start, length = spans[0]
        return SerializedObject(self._read_view[start:start + length].tobytes(),
                                [self._read_view[s:s + n] for s, n in spans[1:]])

    def close(self) -> None:
        """Unmap and close. Mappings that views still use stay until the last view is gone.

        The file itself stays; ``Session.close`` removes it with the session.
        """
        if self._fd is None:
            return
        self._write_array = None
        try:
            self._read_view.release()
        except BufferError:
            pass
        for m in (self._read_map, self._write_map):
            try:
                if m is not None:
                    m.close()
            except BufferError:
                pass  # exported views still point into it; it is unmapped when they die
        os.close(self._fd)
        self._fd = None

    def __repr__(self) -> str:
        return f"Arena({self.path!r}, capacity={self.capacity:,})"
