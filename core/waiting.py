"""``wait`` in a loop at a cost per call that does not grow with the list.

``wait(refs, num_returns=1)`` called again and again on the ``not_ready``
list it returned is how programs consume results as they come. Checking
every ref of the list at each call costs O(len(refs)) per call, O(n^2) for
the loop. Instead, the ``not_ready`` list ``wait`` returns is a ``WaitList``:
a ``list`` (it compares, indexes, slices, pickles as one) that carries the
store's *ready index* for its refs (a ``Watch``, fed by the store's seals),
and that notes any change made to it. When such a list comes back to
``wait`` unchanged, the call takes the first ready refs (in the list's
order) from the index instead of scanning the list; any other input (a
plain list, a changed ``WaitList``, an older list of the same loop) takes
the ordinary path, which gives the same answer.

A store offers the index by defining ``watch(ids) -> Watch`` (see
``anyray.ports.object_store``); a store without it keeps the ordinary path.
"""

from __future__ import annotations

import _thread
from bisect import bisect_left, insort


def _changed(method):
    def changing(self, *args, **kwargs):
        self._token = -1  # changed by its holder: the index no longer describes it
        return method(self, *args, **kwargs)
    changing.__name__ = method.__name__
    return changing


class WaitList(list):
    """The ``not_ready`` list of ``wait``: a plain list to its holder, with the ready index of its refs."""

    __slots__ = ("_loop", "_token")

    for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop",
                  "remove", "clear", "sort", "reverse"):
        locals()[_name] = _changed(getattr(list, _name))
    del _name

    def __reduce__(self):
        return list, (list(self),)  # pickles (and copies) as a plain list

    def __copy__(self):
        return list(self)


class WaitLoop:
    """One chain of ``wait`` calls: the store's ``Watch`` over the refs of its first ``not_ready`` list, the
    positions (in that first list) already returned, and which ``WaitList`` of the chain is current."""

    __slots__ = ("watch", "store", "taken", "token", "_claim")

    def __init__(self, watch, store):
        self.watch = watch
        self.store = store
        self.taken: list[int] = []  # positions returned as ready so far, sorted
        self.token = 0
        self._claim = _thread.allocate_lock()

    def hand(self, refs: WaitList) -> WaitList:
        """``refs`` (new, not yet seen by anyone) as the chain's current list."""
        self.token += 1
        refs._loop, refs._token = self, self.token
        return refs


def start(store, refs: list, ids: list[bytes]) -> list:
    """The ``not_ready`` list for ``refs`` (ids ``ids``): a ``WaitList`` with a ready index when the
    store keeps one, else ``refs`` itself."""
    watch = store.watch(ids)
    return WaitLoop(watch, store).hand(WaitList(refs)) if watch is not None else refs


def take(refs: WaitList, store, num_returns: int, timeout: float | None):
    """``(ready, not_ready)`` for a ``WaitList`` handed back unchanged, from its index; None when the
    list is not one (changed, an older list of its chain, another store's, or in use by another thread):
    the caller then takes the ordinary path."""
    loop = refs._loop
    if refs._token != loop.token or loop.store is not store or not loop._claim.acquire(False):
        return None
    try:
        if refs._token != loop.token:  # another thread went on with this chain just now
            return None
        try:
            ready, not_ready = _take(loop, refs, num_returns, timeout)
        except BaseException:
            loop.token = -1  # what it took is lost with the exception (a cancel, a Ctrl-C): the chain ends here
            loop.watch.close()
            raise
        if not not_ready:
            loop.watch.close()
            loop.token = -1
            return ready, []
        return ready, loop.hand(not_ready)
    finally:
        loop._claim.release()


def _take(loop: WaitLoop, refs: WaitList, num_returns: int, timeout: float | None) -> tuple[list, WaitList]:
    picked = loop.watch.take(num_returns, timeout)
    taken = loop.taken
    at = [pos - bisect_left(taken, pos) for pos in picked]  # where they are in refs (the list's order)
    for pos in picked:
        insort(taken, pos)
    ready = [refs[i] for i in at]
    not_ready = WaitList(refs)
    for i in reversed(at):
        list.__delitem__(not_ready, i)
    return ready, not_ready
