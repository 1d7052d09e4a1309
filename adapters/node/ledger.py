"""The node's ledger of references and pins: what each worker may read in shared memory (pinned for it),
the references and actor handles it holds (kept alive here on its behalf), the arena ranges granted to
it and not yet sealed, and how objects travel to it and from it.

Everything a worker holds is released when the worker goes (``release``).
"""

from __future__ import annotations

from anyray.exceptions import ObjectLostError, ObjectStoreFullError
from anyray.executor import serialize_failure
from anyray.object_ref import ObjectRef
from anyray.runtime import current_counter
from anyray.serialization import SerializedObject
from anyray.specs import RemoteFailure

from . import messages as m
from .arena import Location
from .store import ArenaObject, to_wire


class Ledger:
    """``lock``: the node's lock; ``seams``: the node's seams (``objects`` for a reader on another node).
    ``handle_of(actor_id)`` (set by the node once its actors part exists) gives the handle a reference to
    an actor is kept alive with."""

    def __init__(self, lock, store, seams):
        self._lock = lock
        self._store = store
        self._seams = seams
        self.handle_of = None

    def fail(self, refs, error: BaseException) -> None:
        """Seal ``error`` as the value of each of ``refs``."""
        failure = serialize_failure(RemoteFailure(error))
        for ref in refs:
            self._store.seal(ref._id, failure)

    def own(self, args: SerializedObject | None):
        """Take a call's arguments: large ones into shared memory, small buffers copied (the caller may
        change its arrays once ``.remote()`` returns)."""
        if args.nbytes >= self._store.inline_max:
            return None, self._store.hold(args)
        return (args.copy_buffers() if args.buffers else args), None

    def wire(self, worker, key: bytes, entry):
        """How ``entry`` travels to ``worker``: inline bytes, or its location, pinned for the worker under ``key``."""
        if type(entry) is ArenaObject:
            if worker.remote:
                return self.copy_out(entry)
            try:
                loc = self._store.pin_loc(entry)  # restored first if it was spilled
            except ObjectStoreFullError:  # shared memory cannot take it back now: its bytes travel instead
                return self.copy_out(entry)
            with self._lock:
                dead = worker.dead  # the message will not reach it; nothing would unpin
                if not dead:
                    pin = worker.pins.get(key)
                    if pin is None:
                        worker.pins[key] = [entry, 1]
                    else:
                        pin[1] += 1
            if dead:
                self._store.unpin(entry)
            return loc
        if entry is None:
            entry = serialize_failure(RemoteFailure(ObjectLostError(
                f"Object {key.hex()} is no longer in the store: every reference to it was dropped.")))
        return to_wire(entry)

    def copy_out(self, entry: ArenaObject) -> tuple:
        """The inline wire form of an object in shared memory (a packed ``Inline``), for a reader that
        cannot map it."""
        obj = self._store.read_copy(entry)  # a spilled object straight from its file
        return m.Inline.pack(obj.data, [bytes(b) for b in obj.buffers])

    def _unpin(self, worker, key: bytes) -> None:
        with self._lock:
            pin = worker.pins.get(key)
            if pin is None:
                return
            pin[1] -= 1
            if not pin[1]:
                del worker.pins[key]
        self._store.unpin(pin[0])

    def apply_refs(self, worker, changes) -> None:
        """The references, handles and pins a worker took or dropped since its last message (``RefChanges``)."""
        changes = m.RefChanges._make(changes)
        counter = current_counter()
        borrowed = worker.borrowed
        unheld = None
        for oid, sign in changes.objects:
            if sign > 0:
                if oid not in borrowed:
                    borrowed[oid] = ObjectRef(oid, None, counter)
            elif borrowed.pop(oid, None) is None:
                (unheld := unheld or []).append(oid)
        if unheld:
            self._free_unheld(unheld, counter)
        for actor_id, sign in changes.handles:
            if sign > 0:
                if actor_id not in worker.handles:
                    handle = self.handle_of(actor_id)
                    if handle is not None:
                        worker.handles[actor_id] = handle
            else:
                worker.handles.pop(actor_id, None)
        for key in changes.unpins:
            self._unpin(worker, key)

    def _free_unheld(self, ids, counter) -> None:
        """A process let go of objects it did not hold here: those nothing here refers to are freed (what a
        generator's consumer frees of its stream, which nobody holds: the items it did not take, the count,
        its acks), as they would be once the last reference to them went (so is an id whose first reference
        and last went out in one batch)."""
        if counter is None:
            return  # nothing counts references in this process: nothing to go by
        free = []
        for oid in ids:
            counter.if_unreferenced(oid, lambda oid=oid: free.append(oid))
        if free:
            self._store.free(free)

    def contained_refs(self, worker, contained) -> list:
        """Driver-side references for the ids a value holds, so the stored value keeps them alive."""
        if not contained:
            return []
        counter = current_counter()
        out = []
        for item in contained:
            held = m.Contained._make(item)
            if held.kind == m.OBJECT:
                out.append(ObjectRef(held.id, None, counter))
            else:
                handle = self.handle_of(held.id)
                if handle is not None:
                    out.append(handle)
        return out

    def seal_wires(self, worker, ids, wires, contained) -> None:
        """Seal the values a worker sent (results, puts)."""
        for oid, wire, inner in zip(ids, wires, contained):
            if type(wire) is Location:
                worker.grants.discard(wire.offset)
            self._store.seal_wire(oid, wire, self.contained_refs(worker, inner))

    def answer(self, worker, ids) -> list:
        """The objects ``ids`` (sealed) as they travel to ``worker``: a packed ``Got`` each."""
        store = self._store
        out = []
        for oid in ids:
            entry = store.entry(oid)
            out.append(m.Got.pack(oid, self.wire(worker, oid, entry)))
            inner = getattr(entry, "contained_refs", None)
            if inner:  # the worker will hold these once it unpickles the value
                for ref in inner:
                    if type(ref) is ObjectRef and ref._id not in worker.borrowed:
                        worker.borrowed[ref._id] = ref
        if worker.peer:  # another node of a cluster also learns where the references inside live
            return self._seams.objects.answer_peer(out)
        return out

    def args_from(self, worker, wire, contained):
        """A call's arguments sent by a worker: ``(SerializedObject, None)`` or ``(None, held ArenaObject)``."""
        refs = self.contained_refs(worker, contained)
        if type(wire) is Location:
            worker.grants.discard(wire.offset)
            held = ArenaObject(wire, refs)
            held.pins = 1
            return None, held
        data, buffers = wire  # an Inline (unpacked, as link.from_wire and store.seal_wire do: once per call)
        return SerializedObject(data, buffers, refs), None

    def alloc(self, worker, nbytes: int):
        """A range of shared memory for a worker to write an object into."""
        counter = current_counter()
        if counter is not None:  # objects whose last reference just went give their memory back first
            counter.drain()
        grant = self._store.reserve(nbytes)
        worker.grants.add(grant.offset)
        return grant

    def release(self, worker, pins: dict, grants: set) -> None:
        """``worker`` is gone: what it held (taken from it under the lock) is let go."""
        worker.borrowed.clear()
        worker.handles.clear()
        for entry, count in pins.values():
            for _ in range(count):
                self._store.unpin(entry)
        for offset in grants:
            self._store.forget_grant(offset)
