"""An in-process MetadataStore: a dict, a lock, and timers for expiring keys."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator

from anyray.ports.metadata_store import MetadataStore, Watch


class _MemoryWatch(Watch):
    def __init__(self, store: MemoryMetadataStore, prefix: str, callback):
        self._store, self.prefix, self.callback = store, prefix, callback

    def cancel(self) -> None:
        self._store._unwatch(self)


class MemoryMetadataStore(MetadataStore):
    """State lives as long as the process; watch callbacks run on one delivery thread."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._lock = threading.Lock()
        self._watches: list[_MemoryWatch] = []
        self._events: queue.SimpleQueue | None = None

    def _live(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        value, deadline = item
        if deadline is not None and deadline <= time.monotonic():
            del self._data[key]
            self._notify(key, None)
            return None
        return value

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._lock:
            self._put(key, value, ttl)

    def _put(self, key: str, value: bytes, ttl: float | None) -> None:
        self._data[key] = (value, time.monotonic() + ttl if ttl is not None else None)
        self._notify(key, value)
        if ttl is not None:  # so watchers hear of the expiry even if nobody reads the key
            timer = threading.Timer(ttl + 0.001, self.get, (key,))
            timer.daemon = True
            timer.start()

    def put_unless(self, key: str, value: bytes, ttl: float | None, absent: list[str]) -> bool:
        """``put`` only if none of the keys ``absent`` exists (one atomic step); whether it did."""
        with self._lock:
            if any(self._live(k) is not None for k in absent):
                return False
            self._put(key, value, ttl)
        return True

    def delete(self, key: str) -> bool:
        with self._lock:
            existed = self._live(key) is not None
            self._data.pop(key, None)
            if existed:
                self._notify(key, None)
            return existed

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        with self._lock:
            keys = sorted(k for k in self._data if k.startswith(prefix))
            items = [(k, v) for k in keys if (v := self._live(k)) is not None]
        return iter(items)

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        with self._lock:
            if self._live(key) != expected:
                return False
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = (value, None)
            self._notify(key, value)
            return True

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        w = _MemoryWatch(self, prefix, callback)
        with self._lock:
            self._watches.append(w)
            if self._events is None:
                self._events = queue.SimpleQueue()
                threading.Thread(target=self._deliver, args=(self._events,), name="anyray-metadata-watch",
                                 daemon=True).start()
        return w

    def _unwatch(self, w: _MemoryWatch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def _notify(self, key: str, value: bytes | None) -> None:
        if self._events is not None:
            for w in self._watches:
                if key.startswith(w.prefix):
                    self._events.put((w, key, value))

    def _deliver(self, events: queue.SimpleQueue) -> None:
        while True:
            item = events.get()
            if item is None:
                return
            w, key, value = item
            if w in self._watches:
                w.callback(key, value)

    def close(self) -> None:
        with self._lock:
            self._watches.clear()
            if self._events is not None:
                self._events.put(None)
                self._events = None
