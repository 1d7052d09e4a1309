"""The ObjectStore port: immutable serialized objects, by ObjectRef."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar

from ..object_ref import ObjectRef
from ..serialization import SerializedObject


class ObjectStore(ABC):
    """Holds sealed, immutable objects until they are freed.

    Concurrency: every method may be called from any thread at once. An
    object is written once (``put`` creates and seals it in one step); a
    second ``put`` of the same ref is ignored, so a retried task cannot
    change a value a reader has already seen.

    Capability: ``frees_objects = True`` (the default) declares :meth:`free`,
    which the runtime calls when no ref to an object is left. A store whose
    engine frees objects by its own reference counting sets it False and
    defines no ``free``; the runtime then never calls it.

    Optional: ``watch(ids) -> Watch`` (a ready index over a list of ids, fed by seals, with
    ``take(k, timeout) -> positions`` and ``close()``), which makes a loop of ``wait`` calls cost
    the same per call however long the list (``anyray.waiting``); a store without it is scanned.
    """

    frees_objects: ClassVar[bool] = True

    @abstractmethod
    def put(self, ref: ObjectRef, obj: SerializedObject) -> None:
        """Create and seal ``ref``'s object. The store owns ``obj`` afterwards.

        The caller may reuse or mutate the source buffers once this returns:
        a store either copies them or takes buffers nobody else writes.
        Raises ``ObjectStoreFullError`` (saying what holds the memory and
        what to do) rather than blocking when there is no room.
        """

    def put_stream(self, generator_id: bytes, ref: ObjectRef, obj: SerializedObject) -> None:
        """Store an object of generator ``generator_id``'s stream: an item it yielded, its count, or a
        consumer's ack (see ``anyray.generators``). As ``put``, which is what this default does; a store
        whose objects must travel to where the generator's producer or consumer runs overrides it."""
        self.put(ref, obj)

    @abstractmethod
    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[SerializedObject]:
        """Return the objects in the order asked, waiting until all are sealed.

        ``timeout`` is seconds (``None`` waits forever, ``0`` does not wait);
        past it, raise ``GetTimeoutError``. Returned buffers are read-only
        views where the store shares memory (zero-copy).
        """

    @abstractmethod
    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: float | None) -> set[bytes]:
        """Block until at least ``num_returns`` of ``refs`` are sealed or the timeout passes.

        Return the ids (``ref.binary()``) of those sealed: possibly more than
        ``num_returns``, fewer on timeout. Never raises on timeout.
        """

    @abstractmethod
    def contains(self, ref: ObjectRef) -> bool:
        """Whether ``ref``'s object is sealed here now."""

    def free(self, refs: Iterable[ObjectRef | bytes]) -> None:
        """Optional (``frees_objects``). Drop the objects (by ref or raw id); freeing an absent or pending
        object is not an error.

        An object freed before it was sealed is dropped when it arrives.
        """
        raise NotImplementedError(f"{type(self).__name__} declares frees_objects = False: its engine frees "
                                  f"objects itself.")

    @abstractmethod
    def usage(self) -> dict:
        """``{"objects": n, "bytes": used, "capacity": limit or None}`` for this store."""
