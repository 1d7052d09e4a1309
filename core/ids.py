"""Identifiers: 16 random-prefixed bytes, unique across processes and nodes.

An id is an 8-byte random prefix (one per process, drawn again after fork)
followed by an 8-byte counter, so making one costs a counter step, not a
system call.
"""

from __future__ import annotations

import itertools
import os


class _IdSource:
    def __init__(self) -> None:
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._prefix = os.urandom(8)
        self._counter = itertools.count(1)

    def new(self) -> bytes:
        # next() on itertools.count is atomic under the GIL.
        return self._prefix + next(self._counter).to_bytes(8, "big")


_source = _IdSource()
new_id = _source.new

