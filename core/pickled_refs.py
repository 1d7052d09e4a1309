"""Which refs and actor handles a value held when it was pickled (so the stored value keeps them alive).

``serialization.serialize`` opens a collection around each pickling; the
``__reduce__`` of ObjectRef and ActorHandle adds to it. A leaf module, so
both sides import it without importing each other.
"""

from __future__ import annotations

import contextlib
import threading

_collecting = threading.local()


@contextlib.contextmanager
def collecting(refs: list):
    """Record into ``refs`` every ref pickled in this thread until the block ends (nests)."""
    outer = getattr(_collecting, "refs", None)
    _collecting.refs = refs
    try:
        yield refs
    finally:
        _collecting.refs = outer


def note_ref_pickled(ref) -> None:
    """Called by ``__reduce__`` of a ref or handle: record it in the value being serialized."""
    refs = getattr(_collecting, "refs", None)
    if refs is not None:
        refs.append(ref)
