"""The ready index of a wait loop whose objects are on a node (a cluster driver's, a worker's):
the node keeps the index (``wait_watches.py``); this end keeps the positions it has learned and
asks the node only when it has fewer ready than a call takes."""

from __future__ import annotations

import heapq
import itertools

from anyray.context import current_task
from anyray.exceptions import GetTimeoutError

from . import messages as m
from .wait_watches import UnknownWatch

_keys = itertools.count(1)


class RemoteWatch:
    """``node``: the ``Link`` to the node; ``ids``: the loop's ids, in order."""

    __slots__ = ("_node", "_ids", "_key", "_registered", "_seen", "_ready", "_have", "__weakref__")

    def __init__(self, node, ids: list[bytes]):
        self._node = node
        self._ids = ids
        self._key = next(_keys)
        self._registered = False  # the node holds the index (as far as this end knows)
        self._seen = 0  # how many positions of the node's log this end has
        self._ready: list[int] = []  # a heap of the positions ready and not taken yet
        self._have = bytearray(len(ids))  # 1 at each position learned ready (a resent answer repeats some)

    def ready_count(self) -> int:
        return len(self._ready)

    def take(self, k: int, timeout: float | None) -> list[int]:
        """As ``Watch.take``; a round trip only when fewer than ``k`` are known ready here."""
        if len(self._ready) < k:
            needed = k - len(self._ready)
            try:
                got = self._ask(needed, timeout != 0, current_task.get() is not None, timeout)
            except GetTimeoutError:
                got = self._ask(needed, False, False, None)
            ready, have = self._ready, self._have
            for pos in got:
                if not have[pos]:
                    have[pos] = 1
                    heapq.heappush(ready, pos)
        ready = self._ready
        return [heapq.heappop(ready) for _ in range(min(k, len(ready)))]

    def _ask(self, needed: int, may_wait: bool, blocking: bool, timeout: float | None) -> list[int]:
        for _ in range(2):
            first = not self._registered
            if first:
                self._seen = 0
            try:
                got = self._node.request("wait_watch", m.WaitWatch.pack(
                    self._key, self._ids if first else None, self._seen, needed, may_wait, blocking, False), timeout)
            except UnknownWatch:  # the node let it go (too many at once on this connection): again, with the ids
                self._registered = False
                continue
            self._registered = True
            self._seen += len(got)
            return got
        raise AssertionError("unreachable: a request that registers the index never gets UnknownWatch")

    def close(self) -> None:
        if self._registered:
            self._registered = False
            try:
                self._node.tell("wait_watch", m.WaitWatch.pack(self._key, None, 0, 0, False, False, True))
            except Exception:  # noqa: BLE001 - a link going down takes the node's index with it
                pass
