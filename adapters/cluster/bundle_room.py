"""Where work into any bundle (index -1) of a placement group finds room on other nodes: each node publishes
what its bundles have free with its heartbeat (``BundleHost.free_bundles``, the ``bundles`` of its record);
this node takes off what it sent into them since.
"""

from __future__ import annotations

import threading
import time

from anyray.policy import fits

SENT_SECONDS = 10.0  # how long work sent into another node's bundles is remembered (its heartbeat counts it)


class BundleRoom:
    """The work this node sent into other nodes' bundles lately, and whether one has room for more."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sent: dict[tuple, list] = {}  # (group id hex, node id) -> [(when, demand)] sent into its bundles

    def sent(self, group_hex: str, node_id: str, demand: dict) -> None:
        with self._lock:
            self._sent.setdefault((group_hex, node_id), []).append((time.time(), dict(demand)))

    def has(self, view, group: dict, node_id: str, demand: dict) -> bool:
        """Whether a bundle of ``group`` (its record) on ``node_id`` had ``demand`` free at that node's last
        heartbeat (all of it, when the node did not hold the group's bundles yet), less what this node sent
        into the group's bundles there since."""
        group_hex = group["id"]
        record = view.records.get(node_id) if view is not None else None
        if record is None:
            return False
        free = record.get("bundles", {}).get(group_hex)
        if free is None:  # placed there after its last heartbeat
            free = [b for n, b in zip(group["nodes"], group["bundles"]) if n == node_id]
        since = record.get("heartbeat", 0.0)
        key = (group_hex, node_id)
        with self._lock:
            self._sent[key] = recent = [(t, d) for t, d in self._sent.get(key, ()) if t > since - SENT_SECONDS]
        free = [dict(b) for b in free]
        for _, sent in (r for r in recent if r[0] >= since):  # each took the room of the first bundle there
            # that could hold it
            for bundle in free:
                if fits(sent, bundle):
                    for k, v in sent.items():
                        bundle[k] = bundle.get(k, 0.0) - v
                    break
        return any(fits(demand, bundle) for bundle in free)
