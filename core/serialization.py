"""Serialization shared by every backend: cloudpickle with protocol 5.

Large contiguous buffers (NumPy arrays, Arrow buffers, ``bytes`` subclasses
that opt in) are taken out of band, so a store can keep them as separate
blocks and hand them back without flattening them into one byte string. On
``deserialize`` the buffers are used as they are: if the store hands back
read-only memory (its own bytes, or shared memory), the arrays rebuilt from
it are zero-copy and read-only, as in Ray.

ObjectRefs pickled inside a value are collected in ``contained_refs`` so the
store entry keeps them alive for as long as the value itself lives.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

PROTOCOL = 5

# Buffers smaller than this are left in band: one small bytes object is
# cheaper to move than a list of views.
_OUT_OF_BAND_MIN = 1 << 12

_collecting = threading.local()


@dataclass(slots=True)
class SerializedObject:
    """A pickled value: the pickle stream plus its out-of-band buffers."""

    data: bytes
    buffers: list = field(default_factory=list)
    contained_refs: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def copy_buffers(self) -> "SerializedObject":
        """Return a copy whose buffers are immutable ``bytes`` owned by the copy."""
        return SerializedObject(self.data, [_freeze(b) for b in self.buffers], self.contained_refs)


def _freeze(buf) -> bytes:
    raw = buf.raw() if isinstance(buf, pickle.PickleBuffer) else memoryview(buf)
    return raw.tobytes()


class SerializationError(TypeError):
    """A value could not be pickled; raised at the call site that tried."""


def serialize(value: Any, what: str = "value") -> SerializedObject:
    """Pickle ``value``; raise :class:`SerializationError` naming ``what`` if it cannot be."""
    buffers: list = []
    refs: list = []

    def keep(buf: pickle.PickleBuffer):
        if buf.raw().nbytes < _OUT_OF_BAND_MIN:
            return True  # serialize in band
        buffers.append(buf)
        return False

    outer = getattr(_collecting, "refs", None)
    _collecting.refs = refs
    try:
        data = cloudpickle.dumps(value, protocol=PROTOCOL, buffer_callback=keep)
    except Exception as exc:
        raise SerializationError(
            f"Could not serialize {what} of type {type(value).__name__}: {exc}. "
            "Values passed to or returned from tasks and actors must be picklable; "
            "create unpicklable objects (locks, sockets, open files) inside the task instead."
        ) from exc
    finally:
        _collecting.refs = outer
    return SerializedObject(data, buffers, refs)


def deserialize(obj: SerializedObject) -> Any:
    return pickle.loads(obj.data, buffers=obj.buffers)


def note_ref_pickled(ref) -> None:
    """Called by ``ObjectRef.__reduce__``: record a ref nested in the value being serialized."""
    refs = getattr(_collecting, "refs", None)
    if refs is not None:
        refs.append(ref)
