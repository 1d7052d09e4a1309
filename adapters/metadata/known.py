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
    """When a store's server was unreachable to this process, as monotonic times: its commands or its watch
    connection failed, or a command went unanswered for more than ``SLOW`` seconds (a server that hangs, or
    stopped with its connections open). The nodes' leases ask whether a lapse fell within an outage this node
    saw itself (``cluster/lease.py``)."""

    KEPT = 16  # past outages remembered
    SLOW = 1.0  # seconds without an answer that count as an outage

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._began: float | None = None  # the outage going on now (commands failing)
        self._past: list[tuple[float, float]] = []  # (began, ended), oldest first
        self._waiting: dict[int, float] = {}  # thread -> when its command in flight was sent
        self._local = threading.local()  # .failed: a command of this thread failed since it last asked

    def sent(self) -> None:
        """A command is sent (by this thread): ``answered`` or ``failed`` follows."""
        self._waiting[threading.get_ident()] = time.monotonic()

    def failed(self) -> None:
        sent = self._waiting.pop(threading.get_ident(), None)
        self._local.failed = True
        with self._lock:
            if self._began is None:
                self._began = min(sent or math.inf, time.monotonic())

    def answered(self) -> None:
        sent = self._waiting.pop(threading.get_ident(), None)
        now = time.monotonic()
        if self._began is None and (sent is None or now - sent <= self.SLOW):  # the common case, without the lock
            return
        with self._lock:
            began = self._began if self._began is not None else sent
            if sent is not None:
                began = min(began, sent)
            self._past = [*self._past[-(self.KEPT - 1):], (began, now)]
            self._began = None

    reached = answered  # the watch's connection stands again

    def troubled(self) -> bool:
        """Whether a command of this thread failed since it last asked (a write may have been applied with
        its answer lost: ``patience.py``)."""
        failed, self._local.failed = getattr(self._local, "failed", False), False
        return failed

    def _now_out(self, now: float) -> float | None:
        """When the outage going on now began (commands failing, or one unanswered for ``SLOW``), or None."""
        stalled = min((t for t in list(self._waiting.values()) if now - t > self.SLOW), default=None)
        if self._began is None:
            return stalled
        return self._began if stalled is None else min(self._began, stalled)

    def outages(self) -> list[tuple[float, float | None]]:
        """The outages remembered, oldest first; the one going on now (if any) last, ended None."""
        now = time.monotonic()
        with self._lock:
            began = self._now_out(now)
            return [*self._past, *([(began, None)] if began is not None else [])]

    def reachable_for(self) -> float:
        """Seconds since the server was reached again after the last outage (0 during one; inf if none)."""
        now = time.monotonic()
        with self._lock:
            if self._now_out(now) is not None:
                return 0.0
            return now - self._past[-1][1] if self._past else math.inf
