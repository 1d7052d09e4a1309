"""What a node daemon answers about the cluster: ``anyray status`` and ``anyray list`` (the ``status``,
``list`` and ``list_here`` requests), and the same rows for the head's dashboard."""

from __future__ import annotations

import json
import time

from .group_records import GroupRecords, listing
from .view import DEAD, NODES


class ClusterListing:
    """The node daemon's listing of the cluster, from the metadata store (nodes, placement groups) and from every
    node (actors, tasks, objects, workers, drivers). Mixed into ``NodeDaemon``, whose ``metadata``, ``node``,
    ``scheduler``, ``drivers``, ``dashboard``, ``metadata_kind`` and ``lease_seconds`` it reads."""

    def _scan_json(self, prefix: str) -> list[dict]:
        out = []
        for _key, value in self.metadata.scan(prefix):
            try:
                out.append(json.loads(value))
            except ValueError:
                continue
        return out

    def nodes(self) -> list[dict]:
        return self._scan_json(NODES)

    def status(self) -> dict:
        """The cluster as ``anyray status`` shows it: live and dead nodes, this node's store, placement groups."""
        return {"nodes": self.nodes(), "dead": self._scan_json(DEAD), "this": self.node.node_id,
                "metadata": self.metadata_kind, "usage": self.node.store.usage(), "now": time.time(),
                "lease_seconds": self.lease_seconds, "placement_groups": self.placement_groups(),
                "dashboard_url": self.dashboard.url if self.dashboard is not None else None}

    def placement_groups(self) -> list[dict]:
        return [listing(r) for r in GroupRecords(self.metadata).all()]

    def list_rows(self, kind: str) -> list[dict]:
        """The cluster's nodes or placement groups, or every node's actors, tasks, objects, workers or drivers."""
        if kind == "nodes":
            return self.nodes()
        if kind == "placement-groups":
            return self.placement_groups()
        here = self.drivers.rows() if kind == "drivers" else self.scheduler.state(kind)
        return here + self.scheduler.ask_every_node("list_here", kind)

    def _op_status(self, worker, rid, _args):
        return self.status()

    def _op_list(self, worker, rid, kind):
        return self.list_rows(kind)

    def _op_list_here(self, worker, rid, kind):
        return self.drivers.rows() if kind == "drivers" else self.scheduler.state(kind)
