"""``ray.util.ActorPool``: spread calls over a fixed set of actors, one call per actor at a time.

Built on the public API only (``wait``, ``get``), so it works on every backend. The pool is a
driver-side object and not thread-safe, as in Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import api

_TIMEOUT_MESSAGE = "Timed out waiting for result"


def _key(ref):
    # ``fn`` may return a list of refs (a method with num_returns > 1); the pool then tracks the tuple.
    return tuple(ref) if isinstance(ref, list) else ref


def _wait_target(ref):
    return ref[0] if isinstance(ref, list) else ref


class ActorPool:
    """A pool of actors: ``submit(fn, value)`` runs ``fn(actor, value)`` on an idle actor (``fn`` returns an
    ObjectRef), or queues it until one is free; results come back in submission order (``get_next``) or as
    they finish (``get_next_unordered``).

    Example::

        pool = ActorPool([Worker.remote(), Worker.remote()])
        list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3]))   # [2, 4, 6]
    """

    def __init__(self, actors: list):
        self._idle = list(actors)
        self._busy: dict[Any, tuple[int, Any]] = {}  # ref key -> (submission index, actor)
        self._by_index: dict[int, Any] = {}  # submission index -> ref (as fn returned it)
        self._next_index = 0  # index the next submitted call gets
        self._next_return = 0  # index get_next returns next
        self._queued: list[tuple[Callable, Any]] = []  # submissions waiting for an idle actor

    # -- submitting ------------------------------------------------------------------------------

    def submit(self, fn: Callable, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or queue it until ``get_next*`` frees one."""
        if not self._idle:
            self._queued.append((fn, value))
            return
        actor = self._idle.pop()
        ref = fn(actor, value)
        self._busy[_key(ref)] = (self._next_index, actor)
        self._by_index[self._next_index] = ref
        self._next_index += 1

    def map(self, fn: Callable, values: Iterable) -> Iterator:
        """Submit ``fn(actor, v)`` for every value; a generator of the results in the order of ``values``.

        Results still pending from earlier submissions are dropped first, as in Ray.
        """
        self._drop_pending()
        for value in values:
            self.submit(fn, value)

        def results():
            while self.has_next():
                yield self.get_next()

        return results()

    def map_unordered(self, fn: Callable, values: Iterable) -> Iterator:
        """As ``map``, but the results come in the order the calls finish."""
        self._drop_pending()
        for value in values:
            self.submit(fn, value)

        def results():
            while self.has_next():
                yield self.get_next_unordered()

        return results()

    def _drop_pending(self) -> None:
        while self.has_next():
            try:
                self.get_next(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # -- results ---------------------------------------------------------------------------------

    def has_next(self) -> bool:
        """Whether a submitted call's result has not been returned yet."""
        return bool(self._busy)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The next result in submission order.

        Raises ``StopIteration`` when nothing is pending, and ``TimeoutError`` when the result is not ready
        within ``timeout`` seconds; with ``ignore_if_timedout=True`` that result is then given up (its actor
        returns to the pool) before the ``TimeoutError`` is raised. Raises ``ValueError`` once
        ``get_next_unordered`` has returned results out of order.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return >= self._next_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        ref = self._by_index[self._next_return]
        timed_out = False
        if timeout is not None:
            ready, _ = api.wait([_wait_target(ref)], timeout=timeout)
            if not ready:
                if not ignore_if_timedout:
                    raise TimeoutError(_TIMEOUT_MESSAGE)
                timed_out = True
        del self._by_index[self._next_return]
        self._next_return += 1
        _, actor = self._busy.pop(_key(ref))
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"{_TIMEOUT_MESSAGE}. The task {ref} has been ignored.")
        return api.get(ref)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of any call that finished (the first ready); ``StopIteration`` when nothing is pending,
        ``TimeoutError`` when none finishes within ``timeout`` seconds (with ``ignore_if_timedout=True`` the
        oldest pending call is given up first)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        targets = {_wait_target(self._by_index[index]): key for key, (index, _) in self._busy.items()}
        ready, _ = api.wait(list(targets), num_returns=1, timeout=timeout)
        timed_out = not ready
        if timed_out:
            if not ignore_if_timedout:
                raise TimeoutError(_TIMEOUT_MESSAGE)
            key = min(self._busy, key=lambda k: self._busy[k][0])
        else:
            key = targets[ready[0]]
        index, actor = self._busy.pop(key)
        ref = self._by_index.pop(index)
        self._next_return = max(self._next_return, index + 1)
        self._return_actor(actor)
        if timed_out:
            raise TimeoutError(f"{_TIMEOUT_MESSAGE}. The task {ref} has been ignored.")
        return api.get(ref)

    # -- actors ----------------------------------------------------------------------------------

    def _return_actor(self, actor) -> None:
        self._idle.append(actor)
        if self._queued:
            self.submit(*self._queued.pop(0))

    def has_free(self) -> bool:
        """Whether an actor is idle and no submission is queued."""
        return bool(self._idle) and not self._queued

    def pop_idle(self):
        """Take an idle actor out of the pool (``None`` if none is free)."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add an actor to the pool (it takes a queued submission at once if there is one).

        Raises ``ValueError`` if the actor is already in the pool.
        """
        busy = [a for _, a in self._busy.values()]
        if actor in self._idle or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)
