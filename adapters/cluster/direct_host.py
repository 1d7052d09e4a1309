"""The node's side of direct actor calls (``direct.py`` is the driver's): which actor processes of this
node take calls straight from a driver, and the cancel of such a call.

"direct_actor" (``DirectActor``) answers a ``DirectAnswer``: "ok" with the process's socket when the
actor lives here, runs its calls one at a time on its process's main thread (sync, ``max_concurrency``
1, no concurrency groups, ``max_task_retries`` 0), is alive, the asking driver is on this machine, and
none of the calls this driver sent it through the node is still in flight (so a direct call never
overtakes one of them); "later" while that may change (not started yet, restarting, calls in flight);
"never" when it cannot. The node still decides where the actor lives, restarts it and says when it is
dead: a driver asks again after its direct socket closes, and takes the cause from the answer.

"direct_cancel" cancels a direct call as the node cancels a call it sent: ACTOR_CANCEL on the
process's connection, then SIGINT (a sync actor's main thread runs the call and reads on the signal).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import signal

from ..node import messages as m
from ..node.worker_direct import socket_path


def direct_key(token: bytes, directory: str) -> bytes:
    """The key a node's actor processes check drivers with: derived from the cluster token (which the
    workers never hold) and the node's session directory."""
    return hmac.new(token, b"anyray-direct:" + directory.encode(), hashlib.sha256).digest()


def takes_direct_calls(spec) -> bool:
    """Whether an actor runs its calls one at a time on its process's main thread, none retried."""
    options = spec.options
    return (not spec.is_async and spec.max_concurrency == 1 and not options.get("concurrency_groups")
            and not options.get("max_task_retries"))


class DirectHost:
    """``actors``: the node's actors part; ``send``: the supervision's send to a worker."""

    def __init__(self, actors, send, directory: str):
        self._actors = actors
        self._send = send
        self._dir = directory

    def register(self, register) -> None:
        register("direct_actor", self._op_direct_actor)
        register("direct_cancel", self._op_direct_cancel)

    def _op_direct_actor(self, worker, rid: int, args):
        ask = m.DirectActor._make(args)
        actor = self._actors.actors.get(ask.actor_id)
        if actor is None:  # not placed yet, or lives on another node
            return m.DirectAnswer.pack("later", None, None, "", "")
        state, cause = actor.state, actor.cause
        if worker.remote or not takes_direct_calls(actor.spec) or state == "dead":
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
        return m.DirectAnswer.pack("ok", path, pid, state, cause)

    def _op_direct_cancel(self, worker, rid: int, args):
        cancel = m.DirectCancel._make(args)
        oid = cancel.oid
        actor = self._actors.actors.get(cancel.actor_id)
        process = actor.worker if actor is not None and actor.state == "alive" else None
        if process is None or not self._send(process, m.ACTOR, m.ActorOp.pack(m.ACTOR_CANCEL, oid)):
            return
        pid = process.handle.pid
        if pid and process.handle.alive:
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
