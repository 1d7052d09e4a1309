"""A linked process's user metrics (``ray.util.metrics``) on their way to its node: a worker, or a driver
connected to a node daemon, sends what its table gathered about once a second, as one ``metrics`` request
that wants no answer (the node adds it to its own table: ``adapters/metrics/node_side.py``).

Nothing is loaded or sent in a process whose code never imported ``ray.util.metrics``.
"""

from __future__ import annotations

import sys
import time

SHIP_INTERVAL = 1.0  # seconds between two batches of one process
METRICS_OP = "metrics"

_last = [0.0]  # when this process last sent a batch (one link per process sends its metrics)


def ship(link, force: bool = False) -> None:
    """Send ``link``'s node the user metrics recorded since the last batch, if a second has passed (or
    ``force``: the process is about to end). Called from the link's flush thread."""
    module = sys.modules.get("anyray.util.metrics")
    if module is None or not module.TABLE:
        return
    now = time.monotonic()
    if not force and now - _last[0] < SHIP_INTERVAL:
        return
    conn = getattr(link, "conn", None)
    if conn is not None and conn.closed:  # a link shut down whose flush thread has not ended yet
        return
    _last[0] = now
    batch = module.TABLE.take()
    try:
        link.tell(METRICS_OP, batch)
    except BaseException:
        module.TABLE.merge(batch)  # not lost: the process's next link (a driver that init()s again) sends it
        raise
