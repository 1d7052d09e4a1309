"""What the engine plugins (Ray, Dask) build on engines that offer less than the ports ask.

- :class:`PollingWatch`: ``MetadataStore.watch`` for a store that can only
  be read (a KV with no change feed): it polls a prefix on a thread of its
  own and reports each change, deletions and expiries as ``None``, in key
  order per poll.
- :class:`Feasibility`: the Scheduler port's "warn once when no node can
  ever place this demand", for an engine that keeps such work waiting
  silently; it reads the nodes' resources at most every ``REFRESH`` seconds.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterable

from anyray.exceptions import InfeasibleTaskWarning
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


class Feasibility:
    """Warns once per function or actor whose demand no node of the cluster can ever meet.

    ``read_nodes()`` gives each live node's resources; ``node`` and
    ``cluster`` name them in the warning ("worker", "the Dask cluster").
    """

    REFRESH = 2.0

    def __init__(self, read_nodes: Callable[[], list[dict]], node: str, cluster: str):
        self._read_nodes = read_nodes
        self._node, self._cluster = node, cluster
        self._nodes: list[dict] = []
        self._read_at = float("-inf")
        self._warned: set[bytes] = set()

    def _fits_somewhere(self, demand: dict) -> bool:
        return any(all(n.get(k, 0) >= v for k, v in demand.items()) for n in self._nodes)

    def check(self, key: bytes, name: str, demand: dict) -> None:
        if key in self._warned or self._fits_somewhere(demand):
            return
        if time.monotonic() - self._read_at > self.REFRESH:  # nodes may have joined
            self._nodes = self._read_nodes()
            self._read_at = time.monotonic()
            if self._fits_somewhere(demand):
                return
        self._warned.add(key)
        biggest = {k: max((n.get(k, 0) for n in self._nodes), default=0) for k in demand}
        missing = {k: v for k, v in demand.items() if biggest[k] < v}
        warnings.warn(f"{name} needs {missing} but no {self._node} of {self._cluster} has that much (the largest "
                      f"offer {biggest}); it will wait until a {self._node} with those resources joins.",
                      InfeasibleTaskWarning, stacklevel=5)
