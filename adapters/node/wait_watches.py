"""The ready indexes a node keeps for the wait loops of the processes it serves ("wait_watch").

A driver connected to a node (a cluster's) waits through requests. A loop of
``wait(num_returns=1)`` calls would send the whole list each time and have
the node scan it; instead the asker sends the ids once, and the node keeps
a ``Watch`` of its store over them (fed by seals), plus the log of positions
sealed so far. Each later request says how many log entries the asker has
(``seen``) and the node answers the rest: an answer lost (its request timed
out) is sent again by the next one, so nothing is missed.

A connection keeps at most ``MAX_PER_CONNECTION`` indexes (the oldest goes:
its asker is told so and sends its ids again), and they go with it
(``Worker.watches``).
"""

from __future__ import annotations

import collections

from . import messages as m

MAX_PER_CONNECTION = 64


class _Entry:
    __slots__ = ("watch", "log", "pending")

    def __init__(self, watch):
        self.watch = watch
        self.log: list[int] = []  # positions sealed, in the order the asker learns them
        self.pending = None  # the answer armed for a request that waits

    def close(self) -> None:
        self.watch.close()
        pending, self.pending = self.pending, None
        if pending is not None:
            pending()  # answered with what there is: its asker asks again


class UnknownWatch(LookupError):
    """The node no longer keeps the index asked for: send its ids again."""


class WaitWatches:
    """``respond(worker, rid, ok, value)``, ``lend(worker, rid)``, ``reclaim(worker, rid)`` and ``later``
    (what a handler returns when it answers by itself): the node's (``handlers.Requests``);
    ``prefetch(ids)``: start pulling objects that live on other nodes, or None."""

    def __init__(self, store, respond, lend, reclaim, later, prefetch):
        self._store = store
        self._respond = respond
        self._lend = lend
        self._reclaim = reclaim
        self._later = later
        self._prefetch = prefetch

    def serve(self, worker, rid: int, args):
        """The "wait_watch" request: the positions sealed beyond ``seen`` (at once, or once ``needed``)."""
        ask = m.WaitWatch._make(args)
        table = worker.watches
        if table is None:
            table = worker.watches = collections.OrderedDict()
        if ask.close:
            entry = table.pop(ask.key, None)
            if entry is not None:
                entry.close()
            return None
        entry = table.get(ask.key)
        if ask.ids is not None:
            if entry is not None:
                entry.close()
            if self._prefetch is not None:
                self._prefetch(ask.ids)
            entry = table[ask.key] = _Entry(self._store.watch(ask.ids))
            while len(table) > MAX_PER_CONNECTION:
                table.popitem(last=False)[1].close()
        elif entry is None:
            raise UnknownWatch(f"This node no longer keeps wait index {ask.key}; send its ids again.")
        else:
            table.move_to_end(ask.key)
        watch, log = entry.watch, entry.log
        log += watch.take_ready()
        if len(log) - ask.seen >= ask.needed or not ask.may_wait:
            return log[ask.seen:]
        if ask.blocking:
            self._lend(worker, rid)

        def ready():
            if entry.pending is ready:
                entry.pending = None
            log.extend(watch.take_ready())
            self._reclaim(worker, rid)
            self._respond(worker, rid, True, log[ask.seen:])
        entry.pending = ready
        watch.when_ready(ask.needed - (len(log) - ask.seen), ready)
        return self._later
