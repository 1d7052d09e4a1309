"""How anyray values travel as Dask data, and what an ObjectRef's ``native`` is on Dask.

anyray pickles values itself (cloudpickle, protocol 5); Dask stores and moves
them. A :data:`Payload` is one serialized value as Dask holds it: the pickle
stream alone, or ``[data, buffers, refs]`` where ``buffers`` are uint8
NumPy views of the out-of-band buffers, which Dask sends as frames of their
own (no copy into the stream) and ``refs`` are the Dask futures behind the refs and
actor handles nested in the value. While a payload lives as a Python object
in the worker that made it, those futures keep the nested objects alive.

An anyray ObjectRef's ``native`` is a :class:`DaskRef`, which holds the Dask
``Future``. Unpickled in any process (inside a value, a task argument, an
actor's state) it binds a new future to that process's Dask client and tells
the scheduler that this client wants the key, so the object lives while any
anyray ref to it lives anywhere. An actor handle's ``native`` is a
:class:`DaskActorRef`, the future of the Dask actor that hosts it.
"""

from __future__ import annotations

import pickle
import threading
import weakref
from typing import Union

from anyray.backend_kit import ObjectRef, SerializedObject, current_runtime, note_ref_pickled

Payload = Union[bytes, list]  # data alone, or [data, buffers, refs]


def client_here():
    """The Dask client anyray uses in this process (the worker's client inside a Dask worker)."""
    runtime = current_runtime()
    backend = getattr(runtime, "backend", None) if runtime is not None else None
    client = getattr(backend, "client", None)
    if client is not None:
        return client
    try:
        from distributed import get_client

        return get_client()
    except ValueError:
        return None


def adopt(key):
    """A Dask future for ``key`` bound to this process's client, which the scheduler then keeps for us."""
    from distributed import Future

    client = client_here()
    future = Future(key, client)
    if client is not None:
        # An unpickled future is only bound locally; say so to the scheduler (as fire_and_forget does),
        # so the object outlives the copy it came from. The future's release says the opposite.
        client._send_to_scheduler({"op": "client-desires-keys", "keys": [key]})
    return future


class DaskRef:
    """An ObjectRef's ``native``: the Dask future of its value, and what the value must keep alive.

    ``keep`` holds the natives of refs nested in a value this process ``put``:
    the copy Dask stores was pickled, so its nested futures do not hold
    their keys there. ``actor`` is the actor whose call makes the value
    (for ``cancel``).
    """

    __slots__ = ("future", "keep", "actor", "source", "__weakref__")

    def __init__(self, future, keep=None, actor=None, source=None):
        self.future = future
        self.keep = keep
        self.actor = actor
        self.source = source  # for one return of several: the future of the task that makes them all

    def __reduce__(self):
        return _rebind_ref, (self.future.key,)

    def __repr__(self) -> str:
        return f"DaskRef({self.future.key!r})"


_FUTURE = DaskRef.__dict__["future"]  # the slot under InlineRef's property
_scatter_lock = threading.Lock()


class InlineRef(DaskRef):
    """An ObjectRef's ``native`` for a small value held in this process (a value a generator yielded,
    which came inside its stream): read here without Dask, scattered only once something needs its
    future (a task taking it as an argument, a value or a task's arguments holding it)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes):
        self.payload = payload
        super().__init__(None)

    @property
    def future(self):
        future = _FUTURE.__get__(self, InlineRef)
        if future is None:
            with _scatter_lock:
                future = _FUTURE.__get__(self, InlineRef)
                if future is None:
                    [future] = client_here().scatter([self.payload], hash=False)
                    _FUTURE.__set__(self, future)
        return future

    @future.setter
    def future(self, value):
        _FUTURE.__set__(self, value)

    def __repr__(self) -> str:
        return f"InlineRef({len(self.payload)} bytes)"


def _rebind_ref(key) -> DaskRef:
    if key in getattr(_resolving, "keys", ()):
        from distributed import Future

        return DaskRef(Future(key))  # a task's own argument, which Dask keeps while the task runs
    return DaskRef(adopt(key))


_resolving = threading.local()


class resolving:
    """While a task runs, refs to its top-level dependencies unpickle without claiming their keys:
    its arguments name them, and Dask already keeps them for the task."""

    def __init__(self, keys):
        self._keys = frozenset(keys)

    def __enter__(self):
        self._outer = getattr(_resolving, "keys", frozenset())
        _resolving.keys = self._keys | self._outer if self._keys else self._outer

    def __exit__(self, *exc):
        _resolving.keys = self._outer


_actors: weakref.WeakValueDictionary[bytes, DaskActorRef] = weakref.WeakValueDictionary()
_actors_lock = threading.Lock()


class DaskActorRef:
    """An actor handle's ``native``: the future of the Dask actor hosting it; one per actor per process."""

    __slots__ = ("actor_id", "future", "keep", "__weakref__")

    def __init__(self, actor_id: bytes, future):
        self.actor_id = actor_id
        self.future = future
        self.keep = None

    def __reduce__(self):
        note_ref_pickled(self)  # the payload carries the future beside the stream
        return _rebind_actor, (self.actor_id, self.future.key)

    def __repr__(self) -> str:
        return f"DaskActorRef({self.actor_id.hex()[-12:]}, {self.future.key!r})"


def register_actor(actor_id: bytes, future) -> DaskActorRef:
    with _actors_lock:
        found = _actors.get(actor_id)
        if found is None:
            found = _actors[actor_id] = DaskActorRef(actor_id, future)
        return found


def lookup_actor(actor_id: bytes) -> DaskActorRef | None:
    return _actors.get(actor_id)


def _rebind_actor(actor_id: bytes, key) -> DaskActorRef:
    found = _actors.get(actor_id)
    if found is not None:
        return found
    return register_actor(actor_id, adopt(key))


def _future_of(item):
    native = item.native if isinstance(item, ObjectRef) else item
    return getattr(native, "future", None)


def pack(obj: SerializedObject, copy: bool = False, refs: bool = True) -> Payload:
    """Wrap ``obj`` for Dask. ``copy`` copies the buffers: Dask pickles a submitted task's
    arguments later, on its own thread, and the caller may change its arrays once ``remote`` returns.
    ``refs=False`` leaves the nested futures out: in a task's arguments Dask would take them for
    dependencies and wait for them (the submitter keeps them alive instead)."""
    refs = [f for f in map(_future_of, obj.contained_refs) if f is not None] if refs and obj.contained_refs else []
    if not obj.buffers and not refs:
        return bytes(obj.data) if not isinstance(obj.data, bytes) else obj.data
    return [obj.data, [_frame(b, copy) for b in obj.buffers], refs]


def _frame(buffer, copy: bool):
    """A buffer as Dask moves it out of band, without copying: a uint8 NumPy view of it
    (Dask pickles a ``PickleBuffer`` only with protocol 5, which some of its paths do not use)."""
    import numpy as np

    if isinstance(buffer, pickle.PickleBuffer):
        buffer = buffer.raw()
    frame = np.frombuffer(buffer, dtype=np.uint8)
    return frame.copy() if copy else frame


def nested_natives(obj: SerializedObject) -> list:
    """The natives of refs nested in ``obj``, for a ``put`` to keep alive (see :class:`DaskRef`)."""
    out = []
    for item in obj.contained_refs or ():
        native = item.native if isinstance(item, ObjectRef) else item
        if native is not None:
            out.append(native)
    return out


def unpack(payload: Payload) -> SerializedObject:
    if type(payload) is bytes:
        return SerializedObject(payload)
    data, buffers, refs = payload
    # Dask hands frames back as writable arrays; objects are immutable, so what is built on them is not.
    return SerializedObject(data, [memoryview(b).toreadonly() for b in buffers], list(refs))


def pack_returns(outputs: list[SerializedObject], num_returns: int):
    """What a Dask task returns for ``num_returns`` values: one payload, a tuple, or ``None``."""
    if num_returns == 1:
        return pack(outputs[0])
    if num_returns == 0:
        return None
    return tuple(pack(o) for o in outputs)
