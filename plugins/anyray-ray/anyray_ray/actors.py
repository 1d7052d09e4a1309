"""anyray actors as Ray actors: the native handle kept in ``ActorHandle.native``, and named lookups.

:class:`RayActor` is the ``native`` of an anyray ActorHandle: the anyray actor
id and the Ray ActorHandle. There is one per actor per process: unpickling
returns the one already registered here, so every anyray handle of an actor
in this process shares it, and the scheduler finds the Ray handle from a
spec's actor id (:func:`lookup`). The registry is weak: once no anyray
handle holds it, the Ray handle is dropped and Ray's own rule applies (an
unnamed, non-detached actor ends when no handle to it is left).

Named actors are Ray named actors in the same namespace; what anyray needs
to rebuild a handle (actor id, class name, method table) is kept in Ray's
cluster KV under the Ray actor id (:class:`ActorDirectory`).
"""

from __future__ import annotations

import threading
import weakref

import cloudpickle

from anyray.backend_kit import ActorHandle, note_ref_pickled

_registry: weakref.WeakValueDictionary[bytes, RayActor] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


class RayActor:
    """The Ray side of one anyray actor; pickled with its anyray handle."""

    __slots__ = ("actor_id", "handle", "__weakref__")

    def __init__(self, actor_id: bytes, handle):
        self.actor_id = actor_id
        self.handle = handle

    def __reduce__(self):
        # Noted like a nested ObjectRef, so the payload carries the Ray handle beside anyray's
        # stream and Ray counts the reference (see transport.py).
        note_ref_pickled(self)
        return register, (self.actor_id, self.handle)

    def __repr__(self) -> str:
        return f"RayActor({self.actor_id.hex()[-12:]}, {self.handle!r})"


def register(actor_id: bytes, handle) -> RayActor:
    """The process's RayActor for ``actor_id``, made from ``handle`` if there is none yet."""
    with _registry_lock:
        found = _registry.get(actor_id)
        if found is None:
            found = RayActor(actor_id, handle)
            _registry[actor_id] = found
        return found


def lookup(actor_id: bytes) -> RayActor | None:
    """The registered RayActor; ``None`` when no anyray handle of that actor lives in this process."""
    return _registry.get(actor_id)


class ActorDirectory:
    """anyray's description of named actors, in Ray's cluster-wide KV, keyed by Ray actor id."""

    PREFIX = "actors/"

    def __init__(self, metadata):
        self._metadata = metadata

    def record(self, ray_handle, actor_id: bytes, class_name: str, methods: dict, if_absent: bool = False) -> None:
        """Describe the actor behind ``ray_handle``. ``if_absent`` keeps an existing description
        (``get_if_exists`` may have returned an actor another caller created)."""
        key, blob = self.PREFIX + ray_handle._actor_id.hex(), cloudpickle.dumps((actor_id, class_name, methods))
        if if_absent:
            self._metadata.compare_and_set(key, None, blob)
        else:
            self._metadata.put(key, blob)

    def forget(self, ray_handle) -> None:
        self._metadata.delete(self.PREFIX + ray_handle._actor_id.hex())

    def handle_of(self, ray_handle) -> ActorHandle | None:
        """The anyray handle of a live named actor, or ``None`` if anyray did not make it."""
        blob = self._metadata.get(self.PREFIX + ray_handle._actor_id.hex())
        if blob is None:
            return None
        actor_id, class_name, methods = cloudpickle.loads(blob)
        return ActorHandle(actor_id, class_name, methods, register(actor_id, ray_handle))
