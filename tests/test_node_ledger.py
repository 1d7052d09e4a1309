"""The node's ledger of references and pins (``adapters/node/ledger.py``), with no processes: a real
shared-memory store over a real arena in a session directory of its own, and the node's record of a
worker (no process behind it)."""

from __future__ import annotations

import threading

import pytest

from anyray import ids
from anyray.adapters.common.resources import ResourcePool
from anyray.adapters.node import messages as m
from anyray.adapters.node.arena import Arena, Location
from anyray.adapters.node.ledger import Ledger
from anyray.adapters.node.seams import Seams
from anyray.adapters.node.session import Session
from anyray.adapters.node.store import ArenaObject, SharedObjectStore
from anyray.adapters.node.supervision import Worker
from anyray.exceptions import ObjectLostError
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject, deserialize

MB = 1 << 20


@pytest.fixture
def store():
    session = Session()
    arena = Arena.create(session, 16 * MB)
    store = SharedObjectStore(arena, inline_max=1024)
    yield store
    store.close()
    arena.close()
    session.close()


@pytest.fixture
def ledger(store):
    ledger = Ledger(threading.RLock(), store, Seams(ResourcePool({"CPU": 1.0}, [])))
    ledger.handle_of = lambda actor_id: None  # no actors on this node
    return ledger


def _large(store) -> tuple[bytes, ArenaObject]:
    oid = ids.new_id()
    store.put(ObjectRef(oid), SerializedObject(b"x" * 4096))
    entry = store.entry(oid)
    assert type(entry) is ArenaObject
    return oid, entry


def test_a_worker_is_sent_the_location_of_a_large_object_pinned_for_it_once_per_read(store, ledger):
    worker = Worker(None, (b"job", "ns"))
    oid, entry = _large(store)
    before = entry.pins
    assert ledger.wire(worker, oid, entry) == entry.loc
    assert ledger.wire(worker, oid, entry) == entry.loc
    assert entry.pins == before + 2 and worker.pins[oid][1] == 2
    ledger.apply_refs(worker, m.RefChanges.pack(objects=[], handles=[], unpins=[oid]))  # it dropped one view
    assert entry.pins == before + 1 and worker.pins[oid][1] == 1


def test_what_a_worker_holds_goes_when_it_does(store, ledger):
    worker = Worker(None, (b"job", "ns"))
    oid, entry = _large(store)
    before = entry.pins
    ledger.wire(worker, oid, entry)
    grant = ledger.alloc(worker, 2048)
    used = store.arena.usage()["bytes"]
    ledger.apply_refs(worker, m.RefChanges.pack(objects=[(oid, 1)], handles=[], unpins=[]))
    assert oid in worker.borrowed
    pins, grants = worker.pins, worker.grants
    ledger.release(worker, pins, grants)
    assert entry.pins == before
    assert store.arena.usage()["bytes"] < used  # the range granted and never sealed went back
    assert worker.borrowed == {} and grant.offset in grants


def test_a_reader_on_another_machine_gets_the_bytes_inline_and_a_dead_worker_no_pin(store, ledger):
    remote, dead = Worker(None, (b"job", "ns")), Worker(None, (b"job", "ns"))
    remote.remote, dead.dead = True, True
    oid, entry = _large(store)
    before = entry.pins
    data, buffers = ledger.wire(remote, oid, entry)
    assert data == b"x" * 4096 and buffers == []
    assert ledger.wire(dead, oid, entry) == entry.loc
    assert entry.pins == before and remote.pins == {} and dead.pins == {}


def test_an_object_no_longer_in_the_store_travels_as_an_object_lost_error(ledger):
    oid = ids.new_id()
    data, buffers = ledger.wire(Worker(None, (b"job", "ns")), oid, None)
    failure = deserialize(SerializedObject(data, buffers))
    assert isinstance(failure.error, ObjectLostError) and oid.hex() in str(failure.error)


def test_references_inside_a_sealed_value_are_kept_alive_by_it(store, ledger):
    worker = Worker(None, (b"job", "ns"))
    inner, oid = ids.new_id(), ids.new_id()
    ledger.seal_wires(worker, [oid], [m.Inline.pack(b"data", [])], [[m.Contained.pack(m.OBJECT, inner)]])
    [ref] = store.entry(oid).contained_refs
    assert type(ref) is ObjectRef and ref._id == inner
    answer = ledger.answer(worker, [oid])
    assert answer == [m.Got.pack(oid, m.Inline.pack(b"data", []))]
    assert inner in worker.borrowed  # the reader will hold it too


def test_a_worker_seals_what_it_wrote_into_its_grant(store, ledger):
    worker = Worker(None, (b"job", "ns"))
    grant = ledger.alloc(worker, 100)
    oid = ids.new_id()
    ledger.seal_wires(worker, [oid], [Location(grant.offset, 100, ())], [[]])
    assert grant.offset not in worker.grants and type(store.entry(oid)) is ArenaObject
