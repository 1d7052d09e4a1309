"""What the engine plugins (Ray, Dask) build on engines that offer less than the ports ask.

- :class:`PollingWatch`: ``MetadataStore.watch`` for a store that can only
  be read (a KV with no change feed): it polls a prefix on a thread of its
  own and reports each change, deletions and expiries as ``None``, in key
  order per poll.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from anyray.ports.metadata_store import Watch


class PollingWatch(Watch):
    def __init__(self, scan: Callable[[str], Iterable[tuple[str, bytes]]], prefix: str,
                 callback: Callable[[str, bytes | None], None], every: float, name: str):
        self._scan, self._prefix, self._callback, self._every = scan, prefix, callback, every
        self._stop = threading.Event()
        self._seen = dict(scan(prefix))
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._every):
            try:
                now = dict(self._scan(self._prefix))
            except ConnectionError:
                continue  # the next poll retries
            changes = [(k, v) for k, v in now.items() if self._seen.get(k) != v]
            changes += [(k, None) for k in self._seen if k not in now]
            self._seen = now
            for key, value in sorted(changes, key=lambda kv_: kv_[0]):
                if self._stop.is_set():
                    return
                self._callback(key, value)

    def cancel(self) -> None:
        self._stop.set()
