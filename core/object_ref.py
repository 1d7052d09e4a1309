"""ObjectRef: a reference to an immutable object in a backend's store."""

from __future__ import annotations

import threading

from . import pickled_refs
from .current import current_counter, require_runtime


class ObjectRef:
    """A future for an object in the store; the object lives while a ref to it does.

    ``native`` is a backend's own handle for the object (an engine's future,
    say), carried with the ref when it is pickled; built-in backends leave it
    ``None``.
    """

    __slots__ = ("_id", "native", "_counter", "__weakref__")

    def __init__(self, object_id: bytes, native=None, counter=None):
        self._id = object_id
        self.native = native
        self._counter = counter
        if counter is not None:
            counter.incref(object_id)

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __del__(self):
        counter = self._counter
        if counter is not None:
            try:
                counter.decref(self._id)
            except Exception:  # interpreter shutdown: nothing left to free
                pass

    def __reduce__(self):
        pickled_refs.note_ref_pickled(self)
        return _rebuild_ref, (self._id, self.native)

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def future(self):
        """A ``concurrent.futures.Future`` that resolves to the object's value (or its error)."""
        import concurrent.futures

        fut: concurrent.futures.Future = concurrent.futures.Future()

        def resolve():
            try:
                fut.set_result(require_runtime().get(self, None))
            except BaseException as exc:  # the future carries any error to its reader
                fut.set_exception(exc)

        threading.Thread(target=resolve, name=f"anyray-future-{self.hex()[-8:]}", daemon=True).start()
        return fut

    def __await__(self):
        import asyncio

        return asyncio.wrap_future(self.future()).__await__()


def _rebuild_ref(object_id: bytes, native):
    return ObjectRef(object_id, native, current_counter())

