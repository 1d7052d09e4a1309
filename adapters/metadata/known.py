"""What a watch has told its callback of its prefix, so that a watch that was away (its stream broke, the
server restarted, a member of an etcd cluster died) can deliver what changed meanwhile: the keys it was told
of and a digest of each value, compared with a fresh read of the prefix (``differences``)."""

from __future__ import annotations

import hashlib
import math
import threading
import time


def _digest(value: bytes) -> bytes:
    return hashlib.blake2b(value, digest_size=16).digest()


class Known:
    """Key -> digest of the value last delivered (a delete forgets the key). ``lock`` serialises delivery."""

    def __init__(self) -> None:
        self._digests: dict[str, bytes] = {}
        self.lock = threading.RLock()

    def told(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._digests.pop(key, None)
        else:
            self._digests[key] = _digest(value)

    def has(self, key: str) -> bool:
        return key in self._digests

    def differences(self, current: dict[str, bytes]) -> list[tuple[str, bytes | None]]:
        """The events that bring a watcher that was told of the known state to ``current``: a put for each
        key new or changed, then a delete for each key gone (keys in order)."""
        changed = [(k, v) for k, v in sorted(current.items()) if self._digests.get(k) != _digest(v)]
        gone = [(k, None) for k in sorted(self._digests) if k not in current]
        return changed + gone


class Reach:
    """When a store's server was unreachable to this process (its commands or its watch connection failed),
    as monotonic times: the nodes' leases ask whether a lapse fell within an outage this node saw itself."""

    KEPT = 16  # past outages remembered

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began: float | None = None  # the outage going on now
        self._past: list[tuple[float, float]] = []  # (began, ended), oldest first

    def failed(self) -> None:
        with self._lock:
            if self._began is None:
                self._began = time.monotonic()

    def reached(self) -> None:
        if self._began is None:  # the common case, without the lock
            return
        with self._lock:
            if self._began is not None:
                self._past = [*self._past[-(self.KEPT - 1):], (self._began, time.monotonic())]
                self._began = None

    def outages(self) -> list[tuple[float, float | None]]:
        """The outages remembered, oldest first; the one going on now (if any) last, ended None."""
        with self._lock:
            return [*self._past, *([(self._began, None)] if self._began is not None else [])]

    def reachable_for(self) -> float:
        """Seconds since the server was reached again after the last outage (0 during one; inf if none)."""
        with self._lock:
            if self._began is not None:
                return 0.0
            return time.monotonic() - self._past[-1][1] if self._past else math.inf
