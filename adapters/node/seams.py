"""Where a node's parts ask for behaviour that a cluster node replaces with parts of its own
(``cluster/node.py``). Each seam defaults to the node's own behaviour; None means "everything is here"."""

from __future__ import annotations

from anyray.policy import Feasibility

from ..common.resources import NodeResources, ResourcePool
from .introspection import LocalOutput, LocalRecords


class Seams:
    __slots__ = ("placement", "objects", "remote_actors", "remote_calls", "record_sink", "output_sink",
                 "resource_view", "feasibility", "groups")

    def __init__(self, pool: ResourcePool):
        self.placement = None      # route(task) -> True when it runs elsewhere; cancel(ref, force, recursive) -> bool
        self.objects = None        # objects living elsewhere: prefetch(ids), prefetch_deps(refs), answer_peer(out)
        self.remote_actors = None  # actors living elsewhere: create_actor, handle_of, named, handles_gone, kill
        self.remote_calls = None   # calls to actors living elsewhere: submit(spec, held) -> bool, cancel(ref, ...)
        self.record_sink = LocalRecords()  # add(worker, records): task records workers send (timeline, error_info)
        self.output_sink = LocalOutput()   # add(worker, output): what tasks print, when workers forward it
        self.resource_view = NodeResources(pool)  # what cluster_resources(), available_resources() and nodes() read
        # warns about work no node can ever hold; totals() starts with this node's
        self.feasibility = Feasibility(lambda: [pool.total()], self.resource_view.infeasible_text)
        # the placement groups: where bundles go, who keeps the table (common/placement_groups.py). The node
        # puts its one-node PlacementGroups here; a cluster node may put its own (same methods) in its place.
        # None: work with a group or node-affinity strategy runs as if it had none.
        self.groups = None
