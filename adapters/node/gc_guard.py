"""Full cyclic-GC passes put off while a node holds a long queue of tasks.

CPython's full collection walks every tracked object while holding the GIL, and it runs each time the
heap grew by a quarter: with 10^5..10^6 pending tasks (a few tracked objects each) one pass stops the
node for seconds. A cluster node then misses its heartbeats (its lease is 3 s) and the cluster counts it
dead; the multiprocess driver just stalls. While more than ``HIGH`` tasks are pending, the node's process
skips full passes (the young generations, where nearly all cyclic garbage dies, are still collected);
once fewer than ``LOW`` tasks remain *and* fewer than ``LOW`` objects are stored (the results of a
drained queue, held until the driver drops its refs, are as many to walk), it takes CPython's
thresholds back (checked as tasks finish), and the next full pass is as cheap as the node is small.
The process-wide setting is CPython's own: ``gc.get_threshold`` shows it meanwhile.
"""

from __future__ import annotations

import gc
import threading

HIGH = 50_000  # pending tasks (by return id) past which full passes wait
LOW = 5_000    # ... and under which they come back
_NEVER = 2**31 - 1

_lock = threading.Lock()
_saved: tuple | None = None  # CPython's thresholds while full passes are put off


def deferring() -> bool:
    return _saved is not None


def queue_grew(pending: int) -> None:
    """``pending`` tasks wait now: past ``HIGH``, put full passes off."""
    global _saved
    if pending >= HIGH and _saved is None:
        with _lock:
            if _saved is None:
                _saved = gc.get_threshold()
                gc.set_threshold(_saved[0], _saved[1], _NEVER)


def queue_shrank(pending: int) -> None:
    """``pending`` tasks (or stored objects, the larger) now: under ``LOW``, give CPython its thresholds
    back."""
    global _saved
    if pending < LOW and _saved is not None:
        with _lock:
            if _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
