"""The objects a generator task or actor method gives its caller, as in Ray 2.x.

- :class:`ObjectRefGenerator` is what ``.remote()`` returns for a generator
  function (by default, and with ``num_returns="streaming"``): ``next()`` /
  ``async for`` give one ObjectRef per ``yield`` once its value exists, in
  order, then ``StopIteration`` / ``StopAsyncIteration`` every time after. A
  backend subclasses it (``_next``, ``_anext``, ``completed``, ``next_ready``,
  ``is_finished``, ``_ready`` for ``wait``). It cannot be pickled, so it cannot be
  passed to a task or put, as in Ray.
- :class:`DynamicObjectRefGenerator` is the value of the one ref a
  ``num_returns="dynamic"`` call returns: the refs of every yield. Iterating
  takes them out (a second iteration gives nothing), as in Ray.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator


class ObjectRefGenerator:
    """A stream of ObjectRefs, one per value a generator task yields."""

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self):
        return self._next()

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self):
        return await self._anext()

    def _next(self):
        raise NotImplementedError

    async def _anext(self):
        raise NotImplementedError

    def completed(self):
        """An ObjectRef that resolves (to None) once the generator task has ended; it raises what ended the task
        when the task failed outside the user's code (a crash, a cancel)."""
        raise NotImplementedError

    def next_ready(self) -> bool:
        """True when ``next()`` would return a ref whose value exists now; False at the end."""
        raise NotImplementedError

    def is_finished(self) -> bool:
        """True once the stream has ended and every ref was taken: ``next()`` raises StopIteration."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """What ``wait`` counts as ready: the next ref is ready, or the stream has ended."""
        return self.next_ready() or self.is_finished()

    def send(self, value):
        raise NotImplementedError("`gen.send` is not supported.")

    def throw(self, *args):
        raise NotImplementedError("`gen.throw` is not supported.")

    def close(self):
        raise NotImplementedError("`gen.close` is not supported.")

    def __reduce__(self):
        raise TypeError("An ObjectRefGenerator cannot be pickled, so it cannot be passed to a task or actor, put, "
                        "or returned; pass the ObjectRefs it yields instead.")


class DynamicObjectRefGenerator:
    """The refs of a ``num_returns="dynamic"`` generator task, one per yield; iterating takes them out."""

    def __init__(self, refs: Iterable):
        self._refs = collections.deque(refs)

    def __iter__(self) -> Iterator:
        while self._refs:
            yield self._refs.popleft()

    def __len__(self) -> int:
        return len(self._refs)

    def __reduce__(self):
        return DynamicObjectRefGenerator, (list(self._refs),)

    def __repr__(self) -> str:
        return f"<anyray.DynamicObjectRefGenerator of {len(self._refs)} refs>"
