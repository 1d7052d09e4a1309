"""How an anyray ``SerializedObject`` travels as a Ray object, and how refs map to Ray refs.

anyray pickles values itself (cloudpickle, protocol 5); Ray stores and moves
them. A :data:`Payload` carries one serialized value for Ray:

- ``data`` is anyray's pickle stream (in band);
- ``buffers`` are its out-of-band buffers, wrapped as ``PickleBuffer`` so
  Ray's own protocol-5 pickler writes them out of band into its object store
  and hands them back as read-only views of shared memory (zero-copy NumPy);
- ``refs`` are the Ray ObjectRefs behind the anyray ObjectRefs nested in the
  value, and the Ray ActorHandles behind nested anyray actor handles (both
  noted in ``SerializedObject.contained_refs`` while anyray pickles). Ray
  pickles them with its own reducers, so Ray's ownership and borrowing
  protocol sees every one: an object or an actor stays alive while any value
  that contains a reference to it does.

Inside anyray's stream an ObjectRef's ``native`` (its Ray ref) is pickled
plainly, by id, and an actor's Ray handle with Ray's out-of-band pickling,
which registers nothing with the owner. The id resolves in the reading process because the same
ref arrived, registered with its owner, in ``refs`` beside it; the
``SerializedObject`` made on read keeps ``refs`` alive (as its
``contained_refs``) until the value has been rebuilt.
"""

from __future__ import annotations

import pickle
from typing import Union

from anyray.backend_kit import ObjectRef, SerializedObject, serialize

from .actors import RayActor

Payload = Union[bytes, list]  # data alone, or [data, buffers, refs]


def pack(obj: SerializedObject) -> Payload:
    """Wrap ``obj`` for Ray. Buffers are not copied here; Ray copies them once into its store.

    A value without buffers or nested refs travels as its bytes alone, which
    Ray stores raw; otherwise as a plain list, which Ray encodes with
    msgpack and pickles only the buffers and refs of (a tuple, or a class
    of ours, Ray would pickle whole on every call).
    """
    refs = [n for n in map(_native, obj.contained_refs) if n is not None] if obj.contained_refs else []
    if not obj.buffers and not refs:
        return obj.data
    buffers = [b if isinstance(b, pickle.PickleBuffer) else pickle.PickleBuffer(b) for b in obj.buffers]
    return [obj.data, buffers, refs]


def _native(item):
    """The Ray object behind an item of ``contained_refs``: an ObjectRef's Ray ref or an actor's Ray handle."""
    if isinstance(item, ObjectRef):
        return item.native
    if isinstance(item, RayActor):
        return item.handle
    return None


def unpack(payload: Payload) -> SerializedObject:
    """The value as the core reads it; keeps the nested Ray refs alive while it lives.

    Three values Ray makes itself also arrive here: ``None``, what the ref of a
    generator task (``completed()``) holds, the ``DynamicObjectRefGenerator``
    of a ``num_returns="dynamic"`` task, and the ``PlacementGroup`` a
    placement group's ``ready()`` ref holds.
    """
    if type(payload) is bytes:
        return SerializedObject(payload)
    if payload is None:
        return serialize(None)
    if not isinstance(payload, list):
        from ray.util.placement_group import PlacementGroup

        if isinstance(payload, PlacementGroup):  # what a placement group's ready() ref resolves to
            from .placement_groups import group_payload

            return group_payload(payload)
        from .generators import dynamic_payload

        return dynamic_payload(payload)
    data, buffers, refs = payload
    return SerializedObject(data, list(buffers), list(refs))


def pack_returns(outputs: list[SerializedObject], num_returns: int):
    """What a Ray task returns for ``num_returns`` values: one payload, a tuple, or ``None``."""
    if num_returns == 1:
        return pack(outputs[0])
    if num_returns == 0:
        return None
    return tuple(pack(o) for o in outputs)


def native_of(ref: ObjectRef):
    """The Ray ObjectRef behind ``ref`` (``None`` for a ref no Ray backend made)."""
    return ref.native


def bind_returns(returns: list[ObjectRef], ray_refs) -> None:
    """Set each anyray return ref's ``native`` to the Ray ref Ray gave for it."""
    if len(returns) == 1:
        returns[0].native = ray_refs
    elif returns:
        for ref, ray_ref in zip(returns, ray_refs):
            ref.native = ray_ref
