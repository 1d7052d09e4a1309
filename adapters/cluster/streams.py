"""Where the objects of a generator's stream go on a cluster: to the node at the stream's other end.

A generator task or actor call streams its items (and, at its end, their
count) through the object store of the process running it, one
``"stream_put"`` per object (``generators``); its consumer, on the node the
call was submitted to (its *origin*), puts an ack per item it took when the
producer runs under backpressure. A node serves ``"stream_put"`` by this rule:

- from a process of its own (a worker, a driver), for a call handed here by
  another node: the object goes to that node (``STREAM`` on the connection
  that node opened to this one, where the call's result follows it, so the
  items and the count are there before the result) and is not kept here;
- from a process of its own, for a call this node handed to another node:
  the object (an ack) goes to that node (a ``"stream_put"`` request on this
  node's link to it), and is kept here too: a retry of the call on another
  node (its node died) is sent the acks put so far;
- from a peer node (an ack, for a call running here): it is sealed here, and
  freed with the call's generator id; an ack for a call that is over is dropped;
- otherwise (the call runs here): it is sealed here, as a ``"put"``.

A node that dies ends the streams it took part in: the caller's node fails
the calls it handed to the dead node (or runs them again while
``max_retries`` allows, ``placement``), and the producer's node cancels the
calls a dead node handed it, which nobody would read.
"""

from __future__ import annotations

import logging
import pickle

from anyray import generators
from anyray.exceptions import WorkerCrashedError
from anyray.generators import stream_of
from anyray.object_ref import ObjectRef

from ..node import messages as m
from ..node.arena import Location
from ..node.store import ArenaObject

log = logging.getLogger(__name__)


class StreamRoutes:
    """The cluster's handler of ``"stream_put"``, and the ``STREAM`` messages a peer node sends back.

    ``tasks``, ``actors``: the node's parts (a call's state); ``calls``: the calls to actors on other
    nodes (``RemoteCalls``); ``objects``: where objects live, and how one read from a peer is sealed;
    ``forward``, ``actor_call``: the node's handlers of those requests, which this part wraps to learn
    which streaming calls another node hands here; ``cancel(ref, force, recursive)``: the node's."""

    def __init__(self, lock, store, ledger, tasks, actors, calls, objects, forward, actor_call, cancel):
        self.view = None  # the ClusterView, once attached
        self._lock = lock
        self._store = store
        self._ledger = ledger
        self._tasks = tasks
        self._actors = actors
        self._calls = calls
        self._objects = objects
        self._forward, self._actor_call, self._cancel = forward, actor_call, cancel
        self._origins: dict[bytes, object] = {}  # generator id -> the peer (a Worker) that handed its call here
        self._acks: dict[bytes, list] = {}       # generator id -> the acks sealed here for its call
        store.add_free_listener(self._freed)

    def register(self, register) -> None:
        register("stream_put", self._op_stream_put)
        register("forward", self._op_forward)
        register("actor_call", self._op_actor_call)

    # -- calls handed here -------------------------------------------------------------------
    def _op_forward(self, worker, rid, args):
        msg = m.Forward._make(args)
        if msg.return_ids and stream_of(msg.options) is not None:
            self._handed_here(worker, msg.return_ids[0])
        return self._forward(worker, rid, args)

    def _op_actor_call(self, worker, rid, args):
        if worker.peer:
            call = m.CallActor._make(args)
            if call.return_ids and stream_of(call.options) is not None:
                self._handed_here(worker, call.return_ids[0])
        return self._actor_call(worker, rid, args)

    def _handed_here(self, peer, generator_id: bytes) -> None:
        """The node behind ``peer`` handed a streaming call here: its stream goes there. Streams whose
        calls are done here are forgotten now."""
        with self._lock:
            origins = self._origins
            for g in [g for g in origins if not self._running_here(g)]:
                del origins[g]
            origins[generator_id] = peer

    def _running_here(self, generator_id: bytes) -> bool:
        return self._tasks.has_task(generator_id) or generator_id in self._actors.call_owner

    def origin_lost(self) -> None:
        """A node died: the calls it handed here stream to nobody; cancel them (a task's worker is
        killed, so a producer waiting for acks stops too)."""
        with self._lock:
            lost = [g for g, peer in self._origins.items() if peer.dead]
            for g in lost:
                del self._origins[g]
        for g in lost:
            try:
                self._cancel(ObjectRef(g), True, False)
            except Exception:  # noqa: BLE001 - the others are still cancelled
                log.exception("cancelling a stream whose caller's node died failed")

    # -- stream_put --------------------------------------------------------------------------
    def _op_stream_put(self, worker, rid, args):
        put = m.StreamPut._make(args)
        g = put.generator_id
        if worker.peer:  # an ack from the caller's node: sealed here while the call runs, freed with it
            if self._running_here(g):
                self._ledger.seal_wires(worker, [put.oid], [put.wire], [put.contained])
                self._acks.setdefault(g, []).append(put.oid)
            return None  # else the call is over: nobody waits for it
        origin = self._origins.get(g)
        if origin is not None:
            self._to_origin(worker, origin, put)
            return None
        node_id = self._handed_to(g)
        if node_id is not None:  # an ack: to the node running the call, and kept here for a retry elsewhere
            put = put._replace(wire=self._inline(worker, put.wire))
            self._to_producer(node_id, put)
        self._ledger.seal_wires(worker, [put.oid], [put.wire], [put.contained])
        return None

    def forwarded(self, task, link) -> None:
        """``task`` was just handed to the node behind ``link``: a generator's retry there (its first node
        died) gets the acks its consumer has put so far, or under backpressure it would wait for them."""
        stream = stream_of(task.spec.options) if task.attempts else None
        if stream is None or stream[1] <= 0:
            return
        g = task.spec.returns[0]._id
        store, i = self._store, 0
        while (entry := store.entry(generators.ack_id(g, i))) is not None:
            link.tell("stream_put", m.StreamPut.pack(g, generators.ack_id(g, i), m.Inline.pack(entry.data, []), []))
            i += 1

    def _freed(self, ids) -> None:
        """Objects freed here: the acks of a call handed here go with its generator id (the caller's
        node let go of it, and the call is over)."""
        if not self._acks:
            return
        for oid in ids:
            acks = self._acks.pop(oid, None)
            if acks:
                self._store.free(acks)

    def _handed_to(self, generator_id: bytes) -> str | None:
        """The node this node handed the call of ``generator_id`` to, if it did and the call runs there."""
        task = self._tasks.task_of(generator_id)
        if task is not None:
            return task.node if task.state == "forwarded" else None
        return self._calls.node_of_call(generator_id)

    def _to_origin(self, worker, origin, put: m.StreamPut) -> None:
        """Send an object of a call handed here to the node that handed it (``origin``, its connection
        to this node): an object in shared memory stays pinned for that node until it has pulled it."""
        ledger = self._ledger
        wire = put.wire
        refs = ledger.contained_refs(worker, put.contained)
        for ref in refs:  # the origin holds these once it has the object (its hold then replaces these)
            if type(ref) is ObjectRef and ref._id not in origin.borrowed:
                origin.borrowed[ref._id] = ref
        contained = [m.ContainedAt.pack(c.kind, c.id, self._objects.where(c.id) if c.kind == m.OBJECT else None)
                     for c in map(m.Contained._make, put.contained or ())]
        entry = None
        if type(wire) is Location:
            worker.grants.discard(wire.offset)
            entry = ArenaObject(wire, refs)
            entry.pins = 1  # held by this call until the pin for the origin is taken
            wire = ledger.wire(origin, put.oid, entry)
        try:
            origin.handle.send(m.STREAM, m.dumps(m.StreamPut.pack(put.generator_id, put.oid, wire, contained)))
        except WorkerCrashedError:
            pass  # the origin is gone (its pins went with it); its node's death cancels the call
        finally:
            if entry is not None:
                self._store.drop(entry)

    def _inline(self, worker, wire):
        """An object's wire as it travels to another node: inline (an object a process here wrote into this
        node's shared memory is copied out, and its range given back)."""
        if type(wire) is not Location:
            return wire
        worker.grants.discard(wire.offset)
        entry = ArenaObject(wire)
        entry.pins = 1
        try:
            return self._ledger.copy_out(entry)
        finally:
            self._store.drop(entry)

    def _to_producer(self, node_id: str, put: m.StreamPut) -> None:
        """Send an object (an ack) to the node running the call (if it is gone, its retry gets it later)."""
        link = self.view.existing_link(node_id) if self.view is not None else None
        if link is not None:
            try:
                link.tell("stream_put", m.StreamPut.pack(put.generator_id, put.oid, put.wire, put.contained))
            except OSError:
                pass

    # -- STREAM, from a node this one handed a call to -----------------------------------------
    def received(self, link, payload) -> None:
        """A ``STREAM`` on ``link`` (this node's link to the node running the call): seal the object here,
        on the link's reader, so it is sealed before the call's result (which follows it) is read."""
        try:
            put = m.StreamPut._make(pickle.loads(payload))
            self._objects.receive(link.node_id, link, put.oid, put.wire, put.contained)
        except Exception:  # noqa: BLE001 - one bad object must not stop the link
            log.exception("receiving an object of a stream from node %s failed", link.node_id)
