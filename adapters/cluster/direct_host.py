"""The node's side of direct actor calls (``direct.py`` is the driver's): which actor processes of this
node take calls straight from a driver, and the cancel of such a call.

"direct_actor" (``DirectActor``) answers a ``DirectAnswer``: "ok" with the process's socket when the
actor lives here, runs its calls one at a time on its process's main thread (sync, ``max_concurrency``
1, no concurrency groups, ``max_task_retries`` 0), is alive, and none of the calls this driver sent it
through the node is still in flight (so a direct call never overtakes one of them); "later" while that
may change (not started yet, restarting, calls in flight); "never" when it cannot. The socket is the
process's Unix socket for a driver on this machine, and its TCP address (``tcp://host:port/<session
directory>``) for a driver on another machine, or for another node asking for its driver (a node without
TLS: with TLS there is none, and the calls take the nodes' path). An actor that lives on another node:
this node asks that one once it has forwarded a call there (it then knows the node and has a link to
it, on which the question goes behind those calls); "later" before that, and while calls the driver sent
through here wait to learn where the actor is. The node still decides where the actor lives, restarts
it and says when it is dead: a driver asks again after its direct socket closes, and takes the cause
from the answer.

"direct_cancel" cancels a direct call as the node cancels a call it sent: ACTOR_CANCEL on the
process's connection, then SIGINT (a sync actor's main thread runs the call and reads on the signal).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal

from ..node import messages as m
from ..node.handlers import LATER
from ..node.worker_direct import socket_path, tcp_address

_LATER = m.DirectAnswer.pack("later", None, None, "", "")


def direct_key(token: bytes, directory: str) -> bytes:
    """The key a node's actor processes check drivers with: derived from the cluster token (which the
    workers never hold) and the node's session directory."""
    return hmac.new(token, b"anyray-direct:" + directory.encode(), hashlib.sha256).digest()


def takes_direct_calls(spec) -> bool:
    """Whether an actor runs its calls one at a time on its process's main thread, none retried."""
    options = spec.options
    return (not spec.is_async and spec.max_concurrency == 1 and not options.get("concurrency_groups")
            and not options.get("max_task_retries"))


def respond(client, rid: int, answer) -> None:
    """Answer a request of ``client`` (a driver, another node) that was answered ``LATER``."""
    try:
        client.handle.send(m.RESPONSE, m.dumps(m.Response.pack(rid, True, answer)))
    except Exception:  # noqa: BLE001 - it went: nobody waits for the answer
        pass


class DirectHost:
    """``actors``: the node's actors part; ``send``: the supervision's send to a worker; ``remote_actors``,
    ``remote_calls``: the cluster's actors and calls of actors on other nodes."""

    def __init__(self, actors, send, directory: str, remote_actors, remote_calls):
        self._actors = actors
        self._send = send
        self._dir = directory
        self._remote, self._calls = remote_actors, remote_calls

    def register(self, register) -> None:
        register("direct_actor", self._op_direct_actor)
        register("direct_cancel", self._op_direct_cancel)

    def _op_direct_actor(self, worker, rid: int, args):
        ask = m.DirectActor._make(args)
        if self._calls.looking_up(ask.actor_id):  # calls to it wait here to learn where it lives
            return _LATER
        actor = self._actors.actors.get(ask.actor_id)
        if actor is None:  # not placed yet, or lives on another node
            return _LATER if worker.peer else self._ask_its_node(worker, rid, args, ask.actor_id)
        state, cause = actor.state, actor.cause
        if not takes_direct_calls(actor.spec) or state == "dead":
            return m.DirectAnswer.pack("never", None, None, state, cause)
        process = actor.worker
        if state != "alive" or process is None or actor.terminate or not process.handle.pid:
            return m.DirectAnswer.pack("later", None, None, state, cause)
        inflight = actor.inflight
        if any(task_id in inflight for task_id in ask.calls):
            return m.DirectAnswer.pack("later", None, process.handle.pid, state, cause)
        pid = process.handle.pid
        path = socket_path(self._dir, pid)
        if not os.path.exists(path):  # the process is still setting the actor up
            return m.DirectAnswer.pack("later", None, pid, state, cause)
        if worker.remote or worker.peer:  # a driver on another machine, or another node's
            path = tcp_address(self._dir, pid)
            if path is None:  # this node has TLS: such calls take the nodes' path
                return m.DirectAnswer.pack("never", None, None, state, cause)
        return m.DirectAnswer.pack("ok", path, pid, state, cause)

    def _ask_its_node(self, worker, rid: int, args, actor_id: bytes):
        """The answer of the node the actor lives on (``LATER``: it comes when that node answers). Only a
        node this one knows, with a link open: the calls the driver sent through here made both (a node
        found in the store, or a connection made, would hold the driver's requests up meanwhile)."""
        view = self._remote.view
        node_id = self._remote.node_of(actor_id) if view is not None else None
        link = view.existing_link(node_id) if node_id is not None else None
        if link is None:
            return _LATER
        link.call("direct_actor", args, lambda ok, answer: respond(worker, rid, answer if ok else _LATER))
        return LATER

    def _op_direct_cancel(self, worker, rid: int, args):
        cancel = m.DirectCancel._make(args)
        oid = cancel.oid
        actor = self._actors.actors.get(cancel.actor_id)
        if actor is None and not worker.peer:  # a call to an actor on another node: cancelled there
            node_id = self._remote.node_of(cancel.actor_id)
            link = self._remote.view.existing_link(node_id) if node_id is not None else None
            if link is not None:
                link.call("direct_cancel", args, lambda ok, value: None)
            return
        process = actor.worker if actor is not None and actor.state == "alive" else None
        if process is None or not self._send(process, m.ACTOR, m.ActorOp.pack(m.ACTOR_CANCEL, oid)):
            return
        pid = process.handle.pid
        if pid and process.handle.alive:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
