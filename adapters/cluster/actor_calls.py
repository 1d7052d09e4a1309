"""Calls to actors that live on other nodes: sent to the actor's node in the caller's order, their
results read home, and a call whose node is unknown (or gone) held until the actor's record names one.
"""

from __future__ import annotations

import logging
import threading
import time

from anyray.exceptions import ActorDiedError

from ..node import messages as m
from ..node.remote_ports import call_options
from ..node.store import to_wire
from .objects import object_ids
from .peers import NotSent, PeerLink
from .view import ignore

log = logging.getLogger(__name__)

LOOKUP_SECONDS = 30.0  # how long a call to an actor not yet published waits for its record


class RemoteCalls:
    """The node's seam for calls to actors that do not live here: ``submit`` and ``cancel``."""

    def __init__(self, lock, store, actors, remote_actors, objects, ledger, threads):
        """``actors``: the node's own actors part; ``remote_actors``: where actors elsewhere live."""
        self.view = None  # the ClusterView, once attached
        self._lock = lock
        self._store = store
        self._here = actors
        self._actors = remote_actors
        self._objects = objects
        self._fail, self._copy_out = ledger.fail, ledger.copy_out
        self._threads = threads
        self._lookups: dict[bytes, list] = {}      # actor id -> calls waiting for its record, in order
        self._remote_calls: dict[bytes, str] = {}  # first return id of a call on another node -> that node

    def submit(self, spec, held=None) -> bool:
        """Send a call to an actor that does not live here to its node; False if this node has no cluster."""
        if self.view is None:
            return False
        with self._lock:
            waiting = self._lookups.get(spec.actor_id)
            if waiting is not None:  # calls keep their order behind the first one's lookup
                waiting.append((spec, held))
                return True
            node_id = self._actors.node_of(spec.actor_id)
            if node_id is None:
                self._lookups[spec.actor_id] = [(spec, held)]
        if node_id is not None:
            self._forward_call(spec, held, node_id)
        else:
            self._start_lookup(spec.actor_id)
        return True

    def cancel(self, ref, force: bool, recursive: bool) -> bool:
        """Cancel a call running on another node there; False if ``ref`` is not such a call's."""
        node_id = self._remote_calls.get(ref._id)
        if node_id is None:
            return False
        link = self.view.existing_link(node_id)
        if link is not None:
            link.call("cancel", m.CancelRef.pack(ref._id, force, recursive), ignore)
        return True

    def looking_up(self, actor_id: bytes) -> bool:
        """Whether calls to ``actor_id`` wait here to learn which node it lives on."""
        return actor_id in self._lookups

    def node_of_call(self, oid: bytes) -> str | None:
        """The node running the call whose first return id is ``oid``, if this node handed it to one."""
        return self._remote_calls.get(oid)

    def _start_lookup(self, actor_id: bytes) -> None:
        threading.Thread(target=self._look_up, args=(actor_id,), name="anyray-actor-lookup", daemon=True).start()

    def _resolve(self, actor_id: bytes, deadline: float):
        """Wait (until ``deadline``) for an actor's record to name a live node: ``(node id or None, error)``;
        ``(None, None)`` also when the actor lives here."""
        while time.monotonic() < deadline or self._actors.pending(actor_id):  # waiting for its group: no limit
            if self._here.has_actor(actor_id):
                return None, None
            try:
                node_id = self._actors.actor_node(actor_id)
            except ActorDiedError as exc:
                return None, exc
            if node_id is not None:
                return node_id, None
            time.sleep(0.05)
        return None, ActorDiedError(f"No actor with id {actor_id.hex()} lives in this cluster (it may have ended).")

    def _look_up(self, actor_id: bytes) -> None:
        """Send the calls queued for an actor whose node is unknown, in order, once its record names one.

        The calls are taken out in batches and sent without the scheduler's lock; calls made meanwhile
        queue behind them (the list stays registered until it is empty), so one caller's order holds."""
        deadline = time.monotonic() + LOOKUP_SECONDS
        node_id, error = self._resolve(actor_id, deadline)
        while True:
            with self._lock:
                queued = self._lookups.get(actor_id)
                if not queued:
                    self._lookups.pop(actor_id, None)
                    return
                batch, queued[:] = list(queued), []
            for i, (spec, held) in enumerate(batch):
                if node_id is not None:
                    if self._forward_call(spec, held, node_id, requeue=False):
                        continue
                    with self._lock:  # its node is gone: the rest waits for the record to move
                        self._lookups[actor_id][:0] = batch[i:]
                        self._actors.forget_node(actor_id, node_id)
                    time.sleep(0.1)
                    node_id, error = self._resolve(actor_id, deadline)
                    break
                if self._here.has_actor(actor_id):
                    self._here.submit_actor_task(spec, held)  # it lives here
                    continue
                if held is not None:
                    self._store.drop(held)
                self._fail(spec.returns, error)

    def _forward_call(self, spec, held, node_id: str, requeue: bool = True) -> bool:
        """Send an actor call to the node the actor lives on; False if that node cannot be reached (the
        call is then queued for a lookup of where the actor is now, unless ``requeue`` is False)."""
        try:
            link = self.view.link(node_id)
        except (OSError, PermissionError):  # its node is gone: wait for the actor's record to say where it is now
            if not requeue:
                return False
            with self._lock:
                self._actors.forget_node(spec.actor_id, node_id)
                waiting = self._lookups.get(spec.actor_id)
                if waiting is not None:
                    waiting.append((spec, held))
                    return True
                self._lookups[spec.actor_id] = [(spec, held)]
            self._start_lookup(spec.actor_id)
            return True
        if held is not None:
            args, inner = self._copy_out(held), held.contained_refs
        else:
            args, inner = to_wire(spec.args), spec.args.contained_refs
        contained = m.contained_ids(inner) if inner else []
        self._objects.send_expect(link, [r._id for r in spec.deps] + object_ids(contained))
        return_ids = [r._id for r in spec.returns]
        for oid in return_ids:
            link.hold(oid)
        if return_ids:
            self._remote_calls[return_ids[0]] = node_id
        link.call("actor_call", m.CallActor.pack(
            spec.task_id, spec.actor_id, spec.method_name, args, [r._id for r in spec.deps], return_ids,
            spec.caller_id, spec.seq, call_options(spec.options), spec.name, contained), ignore)
        refs = list(spec.returns)  # kept alive here until the results are home
        link.call("get", m.Get.pack(return_ids, False, False),
                  lambda ok, value: self._threads.submit(self._call_back, spec, refs, held, node_id, link, ok, value))
        return True

    def _call_back(self, spec, refs, held, node_id: str, link: PeerLink, ok: bool, value) -> None:
        try:
            if refs:
                self._remote_calls.pop(refs[0]._id, None)
            if not ok and isinstance(value, NotSent):  # it never left: send it where the actor is now
                for ref in refs:
                    link.let_go(ref._id)
                self._forward_call(spec, held, node_id)
                return
            if held is not None:
                self._store.drop(held)
            if not ok:
                self._fail(refs, ActorDiedError(f"The node of actor {spec.actor_id.hex()} ({node_id}) went "
                                                     f"away while it ran {spec.name}: {value}"))
                return
            for got in map(m.GotWithRefs._make, value):
                self._objects.receive(node_id, link, got.oid, got.wire, got.contained)
            for ref in refs:
                link.let_go(ref._id)
        except Exception:  # noqa: BLE001
            log.exception("receiving the results of an actor call from node %s failed", node_id)
