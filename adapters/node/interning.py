"""One shared copy of the option and resource dicts that the tasks of one function repeat.

A driver in another process sends each task's ``options`` and ``resources`` with the task; decoded, each
pending task would hold its own copies (about 1.6 KB for a plain task's fifteen options), where a driver
in the node's own process shares one dict per remote function. The node reads these dicts and never
changes them, so a dict equal to the one the previous task of the same function brought (its values of
the same types, so ``1`` is not taken for ``True``) is replaced by that one. Comparing with the last one
costs two dict comparisons per task, where a general intern table would hash every value. A task's demand
shape (its resources as a sorted tuple, the key of its queue) is interned in a table: shapes are few.
"""

from __future__ import annotations

MAX_FUNCTIONS = 4096  # functions remembered; past it the table starts over


class LastShared:
    """``share(key, d)``: the dict last given for ``key`` if it equals ``d`` (types of its values
    included), else ``d``, remembered for the next call."""

    __slots__ = ("_last",)

    def __init__(self):
        self._last: dict = {}

    def share(self, key, value: dict) -> dict:
        last = self._last.get(key)
        if last is not None and last == value and list(map(type, last.values())) == list(map(type, value.values())):
            return last
        if len(self._last) >= MAX_FUNCTIONS:
            self._last.clear()
        self._last[key] = value
        return value


_SHAPES: dict = {}  # one tuple per demand shape, for every pending task of it


def shape_of(resources: dict) -> tuple:
    """``resources`` as the sorted tuple that keys its queue; one shared tuple per distinct shape."""
    shape = tuple(sorted(resources.items()))
    shared = _SHAPES.get(shape)
    if shared is None:
        if len(_SHAPES) >= MAX_FUNCTIONS:
            _SHAPES.clear()
        _SHAPES[shape] = shared = shape
    return shared
