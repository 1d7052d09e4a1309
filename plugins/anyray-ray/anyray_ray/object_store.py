"""The ObjectStore port on Ray's object store: each anyray ObjectRef is one Ray object.

An anyray ref's ``native`` is its Ray ObjectRef, set by ``put`` here and by
the scheduler for task returns. Ray owns lifetime: an object lives while a
Ray ref to it lives anywhere (Ray's distributed reference counting), so
``free`` has nothing to do. A Ray-level failure of the task that should
have produced an object (worker crash, actor death, cancellation) is
returned as a ``RemoteFailure`` value, as the port's contract asks, so
``get`` raises it and a dependent task receives it as a failed argument.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import ray
from ray import exceptions as rx

from anyray.backend_kit import ObjectRef, ObjectStore, RemoteFailure, SerializedObject, serialize_failure
from anyray.exceptions import GetTimeoutError, ObjectLostError

from .errors import translate
from .state import note_object
from .transport import pack, unpack


def _failure(error: BaseException) -> SerializedObject:
    return serialize_failure(RemoteFailure(error))


class RayObjectStore(ObjectStore):
    """Thread-safe as Ray's own API is; every method may block on Ray's RPCs."""

    frees_objects = False  # Ray frees an object when the last Ray ref to it dies

    def __init__(self, capacity: int | None):
        self._capacity = capacity

    def put(self, ref: ObjectRef, obj: SerializedObject) -> None:
        if ref.native is not None:
            return  # written once; a second put is ignored
        try:
            ref.native = ray.put(pack(obj))
        except rx.RayError as exc:
            raise translate(exc, "put()") from exc
        note_object(ref)  # list_objects shows anyray's id for it

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[SerializedObject]:
        natives = [r.native for r in refs]
        if any(n is None for n in natives):
            return self._get_each(refs, natives, timeout)
        try:
            payloads = ray.get(natives, timeout=timeout)
        except rx.GetTimeoutError as exc:
            raise self._timeout(refs, timeout) from exc
        except rx.RayError:
            return self._get_each(refs, natives, timeout)  # some failed: settle each one
        return [unpack(p) for p in payloads]

    def _get_each(self, refs, natives, timeout) -> list[SerializedObject]:
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for ref, native in zip(refs, natives):
            if native is None:
                out.append(_failure(ObjectLostError(
                    f"{ref!r} has no Ray object behind it: it was not made by the ray backend of this job.")))
                continue
            left = None if deadline is None else max(deadline - time.monotonic(), 0)
            try:
                value = ray.get(native, timeout=left)
            except rx.GetTimeoutError as exc:
                raise self._timeout(refs, timeout) from exc
            except rx.RayError as exc:
                out.append(_failure(translate(exc)))
                continue
            out.append(unpack(value))
        return out

    @staticmethod
    def _timeout(refs, timeout) -> GetTimeoutError:
        return GetTimeoutError(f"get() timed out after {timeout} s waiting for {len(refs)} object(s). "
                               f"Raise the timeout, or use wait() to take what is ready.")

    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[bytes]:
        natives = [r.native for r in refs]
        if None in natives:  # refs no Ray object backs never become ready
            refs = [r for r in refs if r.native is not None]
            natives = [r.native for r in refs]
            if not natives:
                return set()
        try:
            ready, _ = ray.wait(natives, num_returns=min(num_returns, len(natives)), timeout=timeout)
        except rx.RayError as exc:
            raise translate(exc, "wait()") from exc
        # Few are ready at a time: finding them beats hashing every ref (the core rejects duplicates).
        return {refs[natives.index(n)]._id for n in ready}

    def contains(self, ref: ObjectRef) -> bool:
        if ref.native is None:
            return False
        ready, _ = ray.wait([ref.native], num_returns=1, timeout=0, fetch_local=False)
        return bool(ready)

    def usage(self) -> dict:
        total = ray.cluster_resources().get("object_store_memory")
        return {"objects": None, "bytes": None, "capacity": int(total) if total else self._capacity}

