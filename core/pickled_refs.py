"""Which refs and actor handles a value held when it was pickled (so the stored value keeps them alive).

``serialization.serialize`` opens a collection around each pickling; the
``__reduce__`` of ObjectRef and ActorHandle adds to it. A leaf module, so
both sides import it without importing each other.
"""

from __future__ import annotations

import threading

# ``collection.refs``: the list the value being pickled in this thread collects into (None outside a
# pickling). ``serialization.serialize`` sets it around each pickling and puts back what was there before
# (serializations nest: a value's ``__reduce__`` may serialize another).
collection = threading.local()


def note_ref_pickled(ref) -> None:
    """Called by ``__reduce__`` of a ref or handle: record it in the value being serialized."""
    refs = getattr(collection, "refs", None)
    if refs is not None:
        refs.append(ref)
