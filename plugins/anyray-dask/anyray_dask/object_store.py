"""The ObjectStore port on Dask's distributed memory: each anyray object is one Dask key.

``put`` scatters the value to a worker; task returns are the results of
their Dask tasks. Dask owns lifetime: a key lives while some client holds a
future of it, so ``free`` has nothing to do (dropping the ObjectRef drops
its future). A Dask-level failure of the work that should have made an
object (cancelled, its workers kept dying, its data lost) is returned as a
``RemoteFailure`` value, as the port asks, so ``get`` raises it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError

from anyray.backend_kit import ObjectRef, ObjectStore, RemoteFailure, SerializedObject, serialize_failure
from anyray.exceptions import ActorDiedError, GetTimeoutError, ObjectLostError

from .errors import translate
from .transport import DaskRef, InlineRef, nested_natives, pack, unpack


def _failure(error: BaseException) -> SerializedObject:
    return serialize_failure(RemoteFailure(error))


class DaskObjectStore(ObjectStore):
    """Thread-safe as Dask's client is; ``in_worker`` copies put buffers (a worker keeps them as they are)."""

    frees_objects = False  # Dask forgets a key once no future of it is left

    def __init__(self, client, in_worker: bool):
        self._client = client
        self._in_worker = in_worker
        self._changed = threading.Condition()  # notified when a future some wait() watches is done
        self._watched: set = set()             # keys of the futures with that callback

    def put(self, ref: ObjectRef, obj: SerializedObject) -> None:
        if ref.native is not None:
            return  # written once; a second put is ignored
        if self._in_worker and obj.buffers:
            # Scattered from inside a task, the value stays in this worker's memory unpickled:
            # copy the buffers, so the caller may reuse its arrays.
            obj = SerializedObject(obj.data, [bytes(memoryview(b)) for b in obj.buffers], obj.contained_refs)
        try:
            [future] = self._client.scatter([pack(obj)], hash=False)
        except Exception as exc:  # noqa: BLE001 - Dask's comm errors have no common base
            raise translate(exc, "put()") from exc
        ref.native = DaskRef(future, keep=nested_natives(obj) or None)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[SerializedObject]:
        if any(type(r.native) is InlineRef for r in refs):
            return self._get_with_inline(refs, timeout)
        futures = [_future(r) for r in refs]
        pending = [f for f in futures if f is not None and not f.done()]
        if pending:
            if timeout is not None and timeout <= 0:
                raise self._timeout(refs, timeout)
            from distributed import wait

            try:
                wait(pending, timeout=timeout)
            except TimeoutError as exc:
                raise self._timeout(refs, timeout) from exc
            except CancelledError:
                pass  # each cancelled one is settled below
        finished = list({f.key: f for f in futures if f is not None and f.status == "finished"}.values())
        values = {}
        if finished:
            try:
                values = dict(zip([f.key for f in finished], self._client.gather(finished)))
            except Exception:  # noqa: BLE001 - some were lost since: settle each one
                values = self._gather_each(finished)
        out = []
        for ref, future in zip(refs, futures):
            if future is None:
                out.append(_failure(ObjectLostError(
                    f"{ref!r} has no Dask object behind it: it was not made by the dask backend of this job.")))
            elif future.key in values:
                value = values[future.key]
                out.append(value if isinstance(value, SerializedObject) else unpack(value))
            else:
                out.append(_failure(self._error_of(ref, future)))
        return out

    def _get_with_inline(self, refs, timeout) -> list[SerializedObject]:
        """``get`` of refs some of which hold their value here (small values a generator yielded)."""
        rest = [r for r in refs if type(r.native) is not InlineRef]
        fetched = iter(self.get(rest, timeout) if rest else ())
        return [unpack(r.native.payload) if type(r.native) is InlineRef else next(fetched) for r in refs]

    def _gather_each(self, futures) -> dict:
        values = {}
        for future in futures:
            try:
                values[future.key] = self._client.gather(future)
            except Exception as exc:  # noqa: BLE001
                values[future.key] = _failure(ObjectLostError(f"The object {future.key} was lost: {exc}"))
        return values

    @staticmethod
    def _error_of(ref, future) -> BaseException:
        if future.status == "cancelled":
            actor = ref.native.actor
            if actor is not None and actor.future.status == "cancelled":
                return ActorDiedError(f"The actor of {future.key} is dead: it was killed before it started.")
            return translate(CancelledError())
        try:
            error = future.exception(timeout=5)
        except Exception as exc:  # noqa: BLE001
            error = exc
        if ref.native.actor is not None:  # a call that Dask itself could not run: its actor is unreachable
            return ActorDiedError(f"The actor of {future.key} is unreachable: {type(error).__name__}: {error}")
        return translate(error)

    @staticmethod
    def _timeout(refs, timeout) -> GetTimeoutError:
        return GetTimeoutError(f"get() timed out after {timeout} s waiting for {len(refs)} object(s). "
                               f"Raise the timeout, or use wait() to take what is ready.")

    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[bytes]:
        here = {r.binary() for r in refs if type(r.native) is InlineRef}
        if here:  # held here, so ready; the rest as they are now, or waited for while too few are
            rest = [r for r in refs if r.binary() not in here]
            return here | self.wait(rest, max(num_returns - len(here), 0), timeout) if rest else here
        futures = {r.binary(): f for r in refs if (f := _future(r)) is not None}
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                done = {i for i, f in futures.items() if f.done()}
                if len(done) >= num_returns or len(done) == len(futures):
                    return done
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return done
                # One callback per future over its life, which wakes every waiter: a loop of
                # wait(num_returns=1) over many refs then costs a scan per result, not a subscription.
                for i, f in futures.items():
                    if i not in done and f.key not in self._watched:
                        self._watched.add(f.key)
                        f.add_done_callback(self._on_done)
                self._changed.wait(left)

    def _on_done(self, future) -> None:
        with self._changed:
            self._watched.discard(future.key)
            self._changed.notify_all()

    def contains(self, ref: ObjectRef) -> bool:
        if type(ref.native) is InlineRef:
            return True
        future = _future(ref)
        return future is not None and future.status == "finished"

    def usage(self) -> dict:
        return {"objects": None, "bytes": None, "capacity": None}


def _future(ref: ObjectRef):
    native = ref.native
    return native.future if isinstance(native, DaskRef) else None
