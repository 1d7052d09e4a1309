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
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from . import pickled_refs
from .object_ref import ObjectRef

PROTOCOL = 5

_NUMPY_COPY_MIN = 1 << 20

# Buffers smaller than this are copied into ``bytes`` at once: one small copy is
# cheaper to move than a view. They still travel out of band, because a buffer
# left in band comes back as a writable ``bytearray`` and objects must come back
# read-only whatever their size, as in Ray.
_OUT_OF_BAND_MIN = 1 << 12

PLAIN_TYPES = frozenset({int, float, str, bytes, bool, type(None)})
_PLAIN_ARGS = PLAIN_TYPES | {ObjectRef}  # a ref pickles by reference: the C pickler does it alike
_dumps = pickle.dumps
NO_ARGUMENTS = _dumps(((), {}), PROTOCOL)  # the arguments of a call without any


@dataclass(slots=True)
class SerializedObject:
    """A pickled value: the pickle stream plus its out-of-band buffers."""

    data: bytes
    buffers: list = field(default_factory=list)
    contained_refs: list = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        if not self.buffers:
            return len(self.data)
        return len(self.data) + sum(memoryview(b).nbytes for b in self.buffers)

    def copy_buffers(self) -> SerializedObject:
        """Return a copy whose buffers are immutable ``bytes`` owned by the copy."""
        return SerializedObject(self.data, [_freeze(b) for b in self.buffers], self.contained_refs)


def _freeze(buf) -> bytes | memoryview:
    """An immutable copy of ``buf``: ``bytes``, or a read-only view of a NumPy copy when large.

    NumPy's allocator hands a freed large block straight back, so copying a
    big buffer into it runs at memcpy speed, where a fresh ``bytes`` object
    pays a page fault per page (about five times slower for 100 MB).
    """
    if type(buf) is bytes:
        return buf
    raw = buf.raw() if isinstance(buf, pickle.PickleBuffer) else memoryview(buf)
    if raw.nbytes < _NUMPY_COPY_MIN:
        return raw.tobytes()
    import numpy as np

    copy = np.empty(raw.nbytes, dtype=np.uint8)
    np.copyto(copy, np.frombuffer(raw, dtype=np.uint8))
    copy.flags.writeable = False
    return memoryview(copy)


class SerializationError(TypeError):
    """A value could not be pickled; raised at the call site that tried."""


def serialize(value: Any, what: str = "value") -> SerializedObject:
    """Pickle ``value``; raise :class:`SerializationError` naming ``what`` if it cannot be."""
    if type(value) in PLAIN_TYPES:  # a scalar holds no refs and no buffers: the C pickler alone, nothing to collect
        return SerializedObject(_dumps(value, PROTOCOL), [], [])
    buffers: list = []
    refs: list = []

    def keep(buf: pickle.PickleBuffer):
        raw = buf.raw()
        buffers.append(raw.tobytes() if raw.nbytes < _OUT_OF_BAND_MIN else buf)
        return False

    dumps = pickle.dumps if _is_plain(value) else cloudpickle.dumps
    collection = pickled_refs.collection  # no context manager: this runs twice per task
    outer = getattr(collection, "refs", None)
    collection.refs = refs
    try:
        data = dumps(value, protocol=PROTOCOL, buffer_callback=keep)
    except Exception as exc:
        raise SerializationError(
            f"Could not serialize {what} of type {type(value).__name__}: {exc}. "
            "Values passed to or returned from tasks and actors must be picklable; "
            "create unpicklable objects (locks, sockets, open files) inside the task instead."
        ) from exc
    finally:
        collection.refs = outer
    return SerializedObject(data, buffers, refs)


def serialize_arguments(args: tuple, kwargs: dict, owner: str) -> SerializedObject:
    """Pickle a call's ``(args, kwargs)``; on failure, name the first argument that cannot be pickled.

    The common calls take a fast path: no arguments (one stream, pickled once), and arguments that are
    all scalars or ObjectRefs (the C pickler alone; the refs it holds are its top-level ones, in order)."""
    if not kwargs:
        if not args:
            return SerializedObject(NO_ARGUMENTS, [], [])
        plain = _PLAIN_ARGS
        if all(type(a) in plain for a in args):
            refs = [a for a in args if type(a) is ObjectRef]
            if len(refs) > 1:  # a ref passed twice pickles once (the pickler's memo): collected once
                refs = list({id(ref): ref for ref in refs}.values())
            # (a ref notes itself in the collection of a serialization this one runs inside: none, mostly)
            if not refs or getattr(pickled_refs.collection, "refs", None) is None:
                return SerializedObject(_dumps((args, kwargs), PROTOCOL), [], refs)
    try:
        return serialize((args, kwargs), what=f"the arguments of {owner}")
    except SerializationError:
        named = [(f"argument {i}", a) for i, a in enumerate(args)] + [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            serialize(value, what=f"{label} of {owner}")
        raise


def _is_plain(value: Any) -> bool:
    """Whether the C pickler alone gives the same bytes as cloudpickle (the common small cases:
    scalars, and ``(args, kwargs)`` of scalars and ObjectRefs), which is ten times faster."""
    kind = type(value)
    if kind in PLAIN_TYPES:
        return True
    if kind is tuple and len(value) == 2 and type(value[0]) is tuple and type(value[1]) is dict:
        plain = _PLAIN_ARGS
        return all(type(a) in plain for a in value[0]) and all(type(v) in plain for v in value[1].values())
    return False


def deserialize(obj: SerializedObject) -> Any:
    return pickle.loads(obj.data, buffers=obj.buffers)


note_ref_pickled = pickled_refs.note_ref_pickled  # for the engine plugins' own ref types


_PORTABLE: dict = {}
_LOADED: dict = {}


def portable_classes(value):
    """A tuple of classes (``retry_exceptions``) pickled on its own for a message to a worker; other
    values as they are. A class the worker cannot import then fails that task alone, when the executor
    loads it (:func:`load_classes`), not the reading of the message; a class of ``__main__`` travels
    whole, pickled by the same cloudpickle as the arguments, so it is the class the task raises."""
    if type(value) is not tuple:
        return value
    blob = _PORTABLE.get(value)
    if blob is None:
        blob = _PORTABLE[value] = cloudpickle.dumps(value, protocol=PROTOCOL)
    return blob


def load_classes(value):
    """The inverse of :func:`portable_classes`; raises what loading the classes raised."""
    if type(value) is not bytes:
        return value
    classes = _LOADED.get(value)
    if classes is None:
        classes = _LOADED[value] = pickle.loads(value)
    return classes
