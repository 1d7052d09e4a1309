"""What a watch has told its callback of its prefix, so that a watch that was away (its stream broke, the
server restarted, a member of an etcd cluster died) can deliver what changed meanwhile: the keys it was told
of and a digest of each value, compared with a fresh read of the prefix (``differences``)."""

from __future__ import annotations

import hashlib
import threading


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
