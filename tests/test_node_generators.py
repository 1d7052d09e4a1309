"""Generators on one node (``adapters/node``) with no processes: the stream a task or an actor call is sent
with, and the ``"stream_put"`` op that seals an object of a stream (real store, pool and queues; workers
that only record what is sent to them, ``tests/node_parts.py``). The multiprocess and cluster backends run
the whole path in the conformance suite and ``tests/test_cluster_generators.py``."""

from __future__ import annotations

import threading
import time
import types

import pytest
from node_parts import NodeParts

from anyray import generators, ids
from anyray.adapters.node import messages as m
from anyray.adapters.node.arena import Location
from anyray.adapters.node.pool import WorkerPool
from anyray.adapters.node.remote_ports import call_options
from anyray.adapters.node.session import Session
from anyray.adapters.node.store import ArenaObject
from anyray.adapters.node.worker_actor import stream_spec
from anyray.current import task_runtime
from anyray.object_ref import ObjectRef
from anyray.runtime import ReferenceCounter
from anyray.serialization import SerializedObject, deserialize, serialize
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, TaskSpec

FN = FunctionDescriptor(b"f" * 16, "f", lambda: None)
CLS = FunctionDescriptor(b"c" * 16, "Producer", object)
BACKPRESSURE = "_generator_backpressure_num_objects"


@pytest.fixture
def node():
    parts = NodeParts({"CPU": 4.0})
    yield parts
    parts.close()


def _task(**options) -> TaskSpec:
    return TaskSpec(task_id=ids.new_id(), function=FN, args=SerializedObject(b"args"), deps=[],
                    returns=[ObjectRef(ids.new_id())], resources={"CPU": 1.0},
                    options={"max_retries": 0, "retry_exceptions": False, **options}, name="f")


def _actor() -> ActorSpec:
    return ActorSpec(actor_id=ids.new_id(), cls=CLS, args=SerializedObject(b"args"), deps=[], resources={"CPU": 1.0},
                     options={"name": None, "get_if_exists": False, "lifetime": None, "max_restarts": 0,
                              "max_task_retries": 0, "max_concurrency": None},
                     namespace="ns", is_async=False)


def _call(actor: ActorSpec, seq: int, **options) -> ActorTaskSpec:
    return ActorTaskSpec(task_id=ids.new_id(), actor_id=actor.actor_id, method_name="produce",
                         args=SerializedObject(b"args"), deps=[], returns=[ObjectRef(ids.new_id())],
                         caller_id=b"caller", seq=seq, options=options, name=f"Producer.produce#{seq}")


def test_a_task_is_sent_with_its_stream_and_an_ordinary_task_with_none(node):
    plain, streaming, dynamic = _task(num_returns=1), _task(num_returns="streaming", **{BACKPRESSURE: 3}), \
        _task(num_returns="dynamic")
    for spec in (plain, streaming, dynamic):
        node.tasks.submit(spec)
    sent = {task.task_id: task for _, task in node.workers.of(m.TASK)}
    assert sent[plain.task_id].stream is None
    assert sent[streaming.task_id].stream == ("streaming", 3)
    assert sent[dynamic.task_id].stream == ("dynamic", -1)
    # what the worker builds from it for the executor: the generator id is the one return id
    task = sent[streaming.task_id]
    assert stream_spec(task.return_ids, task.stream) == \
        generators.StreamSpec(generator_id=streaming.returns[0]._id, mode="streaming", backpressure=3)


def test_an_actor_call_is_sent_with_its_stream_and_keeps_what_a_worker_s_actor_host_reads(node):
    actor = _actor()
    node.actors.create_actor(actor)
    plain = _call(actor, 0, num_returns=1, retry_exceptions=False, max_task_retries=None)
    streaming = _call(actor, 1, num_returns="streaming", retry_exceptions=False, max_task_retries=None,
                      **{BACKPRESSURE: 2})
    for call in (plain, streaming):
        node.actors.submit_actor_task(call)
    sent = {body.task_id: body for _, op in node.workers.of(m.ACTOR) if op.kind == m.ACTOR_CALL
            for body in [m.ActorCall._make(op.body)]}
    assert sent[plain.task_id].stream is None
    assert sent[streaming.task_id].stream == ("streaming", 2)
    # a threaded or async actor's host reads the stream from the options: they keep it (and only for a stream)
    assert generators.stream_of(sent[streaming.task_id].options) == ("streaming", 2)
    assert "num_returns" not in sent[plain.task_id].options
    assert call_options({"num_returns": "dynamic"}) == \
        {"retry_exceptions": False, "max_task_retries": None, "num_returns": "dynamic", BACKPRESSURE: -1}


def test_stream_put_seals_like_put_and_wakes_a_waiting_consumer(node):
    consumer, producer = node.workers.spawn(), node.workers.spawn()
    g = ids.new_id()
    item = generators.item_id(g, 0)
    wait = m.Wait.pack([item, generators.count_id(g), g], num_returns=1, may_wait=True, blocking=False)
    assert node.request(consumer, 1, "wait", wait) == []  # nothing of the stream yet
    value = serialize("first")
    node.request(producer, 0, "stream_put", m.StreamPut.pack(g, item, m.Inline.pack(value.data, []), []))
    assert producer.handle.answers == []  # a tell: no answer
    assert consumer.handle.answers == [m.Response(1, True, [item])]
    assert deserialize(node.store.entry(item)) == "first"


def test_stream_put_of_a_large_item_seals_the_range_the_producer_wrote(node):
    producer = node.workers.spawn()
    g, oid = ids.new_id(), generators.item_id(ids.new_id(), 3)
    payload = b"x" * 4096  # above this node's inline_max: the worker wrote it into a granted range
    grant = node.request(producer, 1, "alloc", Location.of(SerializedObject(payload)).nbytes)[-1].value
    loc = node.store.arena.write(grant, SerializedObject(payload))
    assert type(loc) is Location and grant.offset in producer.grants
    node.request(producer, 0, "stream_put", m.StreamPut.pack(g, oid, loc, []))
    entry = node.store.entry(oid)
    assert type(entry) is ArenaObject and entry.loc == loc
    assert grant.offset not in producer.grants  # sealed: no longer a grant to give back if the worker dies
    assert node.store.get([ObjectRef(oid)], 0)[0].data == payload


def test_what_a_consumer_lets_go_of_without_holding_it_is_freed_unless_something_here_refers_to_it(node):
    """A generator's consumer in another process frees the count, its acks and the items it did not take,
    which it never held (nobody does): the node frees them, as it would an object whose last reference
    went; an object that something here still refers to stays."""
    consumer = node.workers.spawn()
    counter = ReferenceCounter(node.store.free)
    with task_runtime(types.SimpleNamespace(counter=counter, handles=None)):
        g = ids.new_id()
        count, kept = generators.count_id(g), generators.item_id(g, 0)
        for oid in (count, kept):
            node.store.put(ObjectRef(oid), serialize(1))
        held_here = ObjectRef(kept, None, counter)  # e.g. a value stored here holds it
        node.ledger.apply_refs(consumer, m.RefChanges.pack([(count, -1), (kept, -1)], [], []))
        assert node.store.entry(count) is None
        assert node.store.entry(kept) is not None
        borrowed = ids.new_id()  # an object the consumer held: its last reference going frees it as before
        node.store.put(ObjectRef(borrowed), serialize(2))
        node.ledger.apply_refs(consumer, m.RefChanges.pack([(borrowed, 1)], [], []))
        node.ledger.apply_refs(consumer, m.RefChanges.pack([(borrowed, -1)], [], []))
        counter.drain()
        assert node.store.entry(borrowed) is None
        del held_here


def test_what_a_worker_sent_before_it_died_is_handled_before_its_death():
    """A generator's values sent just before its worker crashed reach the store before the crash fails the
    task (the consumer then gets them, then the error): the fork server's exit report waits for the
    worker's connection to be read to its end (real processes; a slow reader, so the report comes first)."""
    events, died = [], threading.Event()

    def on_message(handle, tag, payload):
        time.sleep(0.2)
        events.append(bytes(payload))

    def on_exit(handle):
        events.append("exit")
        died.set()

    def send_then_crash():
        import os

        from anyray.adapters.node.worker_loop import current_loop

        loop = current_loop()
        for i in range(5):
            loop.send(m.OUTPUT, str(i).encode())
        os._exit(1)

    session = Session()
    pool = WorkerPool(session, on_message=on_message, on_exit=on_exit)
    try:
        worker = pool.start_worker()
        worker.call_async(send_then_crash)
        assert died.wait(60)
        assert events == [b"0", b"1", b"2", b"3", b"4", "exit"]
        assert worker.exit.returncode == 1  # the fork server's report, not "its connection closed"
    finally:
        pool.close()
        session.close()
