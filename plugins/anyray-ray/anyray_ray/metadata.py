"""The MetadataStore port on Ray's cluster KV (the GCS), shared by every process of the cluster.

Ray's KV offers get, put (optionally only-if-absent), delete and list by
prefix; the rest of the contract is built on those:

- a key with a ``ttl`` stores its deadline (wall-clock seconds, so every
  node agrees) in front of the value; an expired key reads as absent and is
  removed by the first reader;
- ``compare_and_set`` holds a per-key lock key (itself an only-if-absent put,
  with a deadline so a lock left by a dead process is taken over after
  ``LOCK_TTL`` seconds) around its read and write;
- ``watch`` polls its prefix on a thread of its own every ``POLL`` seconds and
  reports each change, deletions and expiries as ``None``, in order per key.

Ray's KV is retried by Ray itself; its failures surface as ``ConnectionError``.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

from ray.experimental import internal_kv as kv

from anyray.backend_kit import MetadataStore, PollingWatch, Watch

NAMESPACE = "anyray"
POLL = 0.1
LOCK_TTL = 5.0
_PLAIN, _EXPIRING = b"\x00", b"\x01"
_LOCKS = "\x00lock/"


def _encode(value: bytes, ttl: float | None) -> bytes:
    if ttl is None:
        return _PLAIN + value
    return _EXPIRING + struct.pack("!d", time.time() + ttl) + value


def _decode(raw: bytes | None) -> bytes | None:
    """The live value of a stored record, or ``None`` if absent or expired."""
    if raw is None:
        return None
    if raw[:1] == _EXPIRING:
        (deadline,) = struct.unpack("!d", raw[1:9])
        return raw[9:] if deadline > time.time() else None
    return raw[1:]


def _kv(call, *args, **kwargs):
    try:
        return call(*args, namespace=NAMESPACE, **kwargs)
    except (OSError, RuntimeError) as exc:
        raise ConnectionError(f"Ray's cluster KV did not answer ({exc}); is the Ray cluster up?") from exc


class RayKVMetadataStore(MetadataStore):
    """Keys live in Ray's KV namespace ``anyray``; safe to call from any thread and process."""

    def __init__(self) -> None:
        self._watches: list[PollingWatch] = []

    def get(self, key: str) -> bytes | None:
        raw = _kv(kv._internal_kv_get, key)
        value = _decode(raw)
        if value is None and raw is not None:
            _kv(kv._internal_kv_del, key)  # expired
        return value

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        _kv(kv._internal_kv_put, key, _encode(value, ttl), True)

    def delete(self, key: str) -> bool:
        existed = self.get(key) is not None
        _kv(kv._internal_kv_del, key)
        return existed

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        keys = sorted(k.decode() for k in _kv(kv._internal_kv_list, prefix))
        items = [(k, v) for k in keys if not k.startswith(_LOCKS) and (v := self.get(k)) is not None]
        return iter(items)

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        lock = _LOCKS + key
        while _kv(kv._internal_kv_put, lock, _encode(b"", LOCK_TTL), False):  # True: someone holds it
            if _decode(_kv(kv._internal_kv_get, lock)) is None:
                _kv(kv._internal_kv_del, lock)  # its holder died: take it over
            else:
                time.sleep(0.005)
        try:
            if self.get(key) != expected:
                return False
            if value is None:
                _kv(kv._internal_kv_del, key)
            else:
                self.put(key, value)
            return True
        finally:
            _kv(kv._internal_kv_del, lock)

    def delete_prefix(self, prefix: str) -> None:
        """Remove every key under ``prefix`` (one KV call; not part of the port)."""
        _kv(kv._internal_kv_del, prefix, del_by_prefix=True)

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        w = PollingWatch(self.scan, prefix, callback, POLL, "anyray-ray-kv-watch")
        self._watches.append(w)
        return w

    def close(self) -> None:
        for w in self._watches:
            w.cancel()
        self._watches.clear()
