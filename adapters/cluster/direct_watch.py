"""The ready index of a wait loop over direct results alone (direct actor calls', leased tasks'): kept in
the driver, fed as their answers are read (``DirectCalls._settle``), so each ``wait(num_returns=1)`` of
the loop costs O(1), not a scan of the list (``core/waiting.py``). A result whose task went through the
node after all (its leased worker died) is asked of the node."""

from __future__ import annotations

import heapq
import time

from anyray.exceptions import GetTimeoutError

from ..node import messages as m


class DirectWatch:
    """``calls``: the driver's ``DirectCalls``; ``ids``: the loop's ids, in order."""

    __slots__ = ("_calls", "_pos", "_ready", "_moved", "__weakref__")

    def __init__(self, calls, ids: list[bytes]):
        self._calls = calls
        self._pos: dict[bytes, int] = {}    # id -> position, not ready yet
        self._ready: list[int] = []         # a heap of the positions ready and not taken
        self._moved: dict[bytes, int] = {}  # id -> position, of results the node makes now
        with calls.lock:
            waiting = calls.waiting
            for i, oid in enumerate(ids):
                if oid in waiting:
                    self._pos[oid] = i
                else:
                    self._ready.append(i)
            if self._pos:
                calls.watches.add(self)
        heapq.heapify(self._ready)

    # under the answers' lock
    def came(self, oid: bytes) -> None:
        pos = self._pos.pop(oid, None)
        if pos is not None:
            heapq.heappush(self._ready, pos)

    def moved(self, oid: bytes) -> None:
        pos = self._pos.pop(oid, None)
        if pos is not None:
            self._moved[oid] = pos

    def ready_count(self) -> int:
        return len(self._ready)

    def take(self, k: int, timeout: float | None) -> list[int]:
        """The first ready positions (at most ``k``), once ``k`` are ready or by ``timeout``."""
        calls = self._calls
        deadline = None if timeout is None else time.monotonic() + timeout
        ready = self._ready
        while len(ready) < k and (self._pos or self._moved):
            left = None if deadline is None else deadline - time.monotonic()
            if self._moved:
                self._ask_node(k - len(ready), left if not self._pos else 0)
            if self._pos and len(ready) < k:
                socks = calls.busy()
                if socks:
                    calls.pump(socks, left, lambda: len(ready) >= k)
                elif not self._moved:
                    time.sleep(0.001)  # answered meanwhile by another thread: settled in a moment
            if left is not None and left <= 0:
                break
        return [heapq.heappop(ready) for _ in range(min(k, len(ready)))]

    def _ask_node(self, needed: int, timeout: float | None) -> None:
        moved = self._moved
        ids = list(moved)
        link, needed = self._calls.link, min(needed, len(ids))
        try:
            got = link.request("wait", m.Wait.pack(ids, needed, timeout != 0, False), timeout)
        except GetTimeoutError:
            got = link.request("wait", m.Wait.pack(ids, needed, False, False))
        for oid in got:
            pos = moved.pop(oid, None)
            if pos is not None:
                heapq.heappush(self._ready, pos)

    def close(self) -> None:
        calls = self._calls
        with calls.lock:
            calls.watches.discard(self)
