"""The send window of an actor whose process reads its connection only between calls.

A sync actor with ``max_concurrency`` 1 runs each call on the main thread of
its process, the thread that reads the node's connection (``worker_actor.
InlineActor``): while a call runs, nothing reads. Calls sent meanwhile pile
up in the socket, and once it is full a send blocks the node's thread that
sends, and whoever waits behind it: the driver inside ``.remote()`` (the
multiprocess backend's node is in the driver), a node daemon's reader of a
driver's or a peer's connection (the cluster). A call that blocks until
later calls are submitted would then wait forever.

So at most ``CALLS`` calls, costing at most ``BYTES`` (their arguments and
``OVERHEAD`` each, about what the kernel charges a small message), are sent
to such a process and not answered yet; the calls beyond wait here, in
order, and go out as answers come back (on the thread that reads the
answer). Both bounds fit well within a Unix socket's default send buffer
(212,992 bytes on Linux), so a send never waits for the process to read.
One call always goes when none is out, whatever its size: a call's message
is at most the inline limit (larger arguments travel in shared memory).

The end of an actor whose handles are all gone goes behind its calls, as
they would have reached the process before it: once none waits here.

The calls that wait here count as submitted to the actor (they are in its
``inflight`` table): a restart retries or fails them as it does those its
process had, as Ray does with calls it had pushed to the actor; a cancel
fails one that waits here, as one still buffered for a process.

Threaded and async actors read their connection all the time (their calls
run on other threads) and have no window: their calls may wait for each
other, which a window could deadlock.
"""

from __future__ import annotations

import collections

CALLS = 64            # calls out to the process and not answered, at most
BYTES = 128 * 1024    # what they cost, at most (their arguments and OVERHEAD each)
OVERHEAD = 1024       # the cost of a call beyond its arguments: its message's fields and the kernel's share


def cost(call) -> int:
    """What a call's message costs in the socket (an ``ActorTaskSpec`` whose arguments the node owns:
    None when they are in shared memory, and only their location travels)."""
    args = call.args
    return OVERHEAD + (args.nbytes if args is not None else 0)


class SendWindow:
    """One actor's: the calls out and what they cost, and the calls waiting for room. The node's lock
    guards it; the actor's send lock orders what goes out."""

    __slots__ = ("bounded", "out", "spent", "waiting", "ending")

    def __init__(self, bounded: bool):
        self.bounded = bounded  # False: every call goes at once (a process that reads all the time)
        self.out: dict[bytes, int] = {}  # task id -> its cost, for each call sent and not answered
        self.spent = 0
        self.waiting: collections.deque = collections.deque()  # calls to send once there is room, in order
        self.ending = False  # the actor is to end after its calls: once none waits, the process is told

    def end_after_calls(self) -> bool:
        """The actor's handles are gone: whether the process may be told now (no call waits here); if not,
        ``ends_now`` says when."""
        if self.waiting:
            self.ending = True
            return False
        return True

    def ends_now(self) -> bool:
        """Whether the process is to be told to end now (it was due, and the last waiting call went out)."""
        if self.ending and not self.waiting:
            self.ending = False
            return True
        return False

    def take(self, call) -> bool:
        """Whether ``call`` may go now (then it counts as out); False: it waits, behind those waiting."""
        if not self.bounded:
            return True
        if self.waiting or not self._room(cost(call)):
            self.waiting.append(call)
            return False
        self._send(call)
        return True

    def answered(self, task_id) -> bool:
        """A call's answer came (or it will never come); whether calls wait for the room it leaves."""
        spent = self.out.pop(task_id, None)
        if spent is not None:
            self.spent -= spent
        return bool(self.waiting) or self.ending

    def next(self, inflight: dict):
        """The next waiting call that may go now (it counts as out from now on), or None. ``inflight``:
        the actor's calls still to answer (one cancelled or failed meanwhile is dropped)."""
        waiting = self.waiting
        while waiting and waiting[0].task_id not in inflight:
            waiting.popleft()
        if not waiting or not self._room(cost(waiting[0])):
            return None
        call = waiting.popleft()
        self._send(call)
        return call

    def drop(self, call) -> bool:
        """Take ``call`` out of those waiting (it is cancelled); whether it was there."""
        waiting = self.waiting
        for i, queued in enumerate(waiting):
            if queued is call:
                del waiting[i]
                return True
        return False

    def clear(self) -> None:
        """The process is gone: nothing is out, and nothing waits (the actor retries or fails its calls)."""
        self.out.clear()
        self.spent = 0
        self.waiting.clear()
        self.ending = False

    def _room(self, spent: int) -> bool:
        return not self.out or (len(self.out) < CALLS and self.spent + spent <= BYTES)

    def _send(self, call) -> None:
        spent = cost(call)
        self.out[call.task_id] = spent
        self.spent += spent


def window_of(spec) -> SendWindow:
    """The window of the actor of ``spec`` (an ``ActorSpec``): bounded when it runs its calls on the thread
    that reads its connection (a sync actor, ``max_concurrency`` 1, no concurrency groups)."""
    return SendWindow(not spec.is_async and spec.max_concurrency == 1 and not spec.options.get("concurrency_groups"))
