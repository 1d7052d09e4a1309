"""A cluster node's side of placement groups: the bundles it holds (``BundleHost``, the node's one-node
``PlacementGroups`` reserving only the bundles placed here), and the node's ``groups`` seam
(``ClusterGroupSeam``), which answers for the whole cluster (``ClusterGroups``) and says where work with a
placement group or node affinity strategy goes.
"""

from __future__ import annotations

import time

from anyray.policy import fits
from anyray.ports.placement_groups import PlacementGroupSpec
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..common.placement_groups import CREATED, REMOVED, Group, PlacementGroups, group_id_of
from .groups import WAIT, ClusterGroups


class BundleHost(PlacementGroups):
    """The bundles of the cluster's groups that this node holds: each reserved against this node's pool by
    the group's owner (``reserve``), all of a group's at once, and given back (``release``). Work scheduled
    into them queues in their own queues, as on one node."""

    @classmethod
    def replacing(cls, groups: PlacementGroups) -> BundleHost:
        """A host made of the parts of the node's own ``groups`` (it takes their place in the node's queues)."""
        return cls(groups._lock, groups._pool, groups._node_queues, groups._put, groups.on_removed)

    def __init__(self, *args):
        super().__init__(*args)
        self._reserved: dict[str, dict[int, float]] = {}  # group id hex -> {bundle index: when reserved}

    def held(self) -> dict[str, dict[int, float]]:
        """The bundles reserved here: {group id hex: {index: when (monotonic)}}."""
        with self._lock:
            return {g: dict(held) for g, held in self._reserved.items() if held}

    def free(self) -> dict:
        return self._pool.available()

    def total(self) -> dict:
        return self._pool.total()

    def reserve(self, record: dict, bundles: dict[int, dict]) -> bool:
        """Take ``bundles`` ({index: resources}) of the group of ``record`` from this node, all or none."""
        group_id = bytes.fromhex(record["id"])
        with self._lock:
            group = self.groups.get(group_id)
            if group is None:
                spec = PlacementGroupSpec([dict(b) for b in record["bundles"]], record["strategy"], record["name"],
                                          record["namespace"], record["lifetime"])
                group = Group(group_id, spec, None, self._lock, self._node_queues, self.node_id)
                self.groups[group_id] = group
            elif group.state == REMOVED:
                return False
            wanted = [group.bundles[i] for i in bundles if group.bundles[i].lease is None]
            leases = []
            for bundle in wanted:
                lease = self._pool.acquire(bundle.resources)
                if lease is None:
                    for taken in leases:
                        self._pool.release(taken)
                    return False
                leases.append(lease)
            reserved = self._reserved.setdefault(record["id"], {})
            for bundle, lease in zip(wanted, leases):
                reserved[bundle.index] = time.monotonic()
                bundle.lease = lease
                bundle.pool.placed(lease)
            if group.state != CREATED:
                group.state = CREATED
                group.placed_at = time.time()
                self._live.append(group)
            self._changed.notify_all()
        self._node_queues.dispatch()
        return True

    def release(self, group_hex: str, indexes) -> None:
        """Give back the group's bundles ``indexes`` (a reservation that did not make the group), or all of
        them and everything in them (``None``: the group was removed)."""
        group_id = bytes.fromhex(group_hex)
        if indexes is None:
            with self._lock:
                self._reserved.pop(group_hex, None)
            self.remove(group_id)
            return
        leases = []
        with self._lock:
            for index in indexes:
                self._reserved.get(group_hex, {}).pop(index, None)
            group = self.groups.get(group_id)
            if group is None or group.state == REMOVED:
                return
            for index in indexes:
                bundle = group.bundles[index]
                if bundle.lease is not None:
                    leases.append(bundle.lease)
                    bundle.lease = None
                    bundle.pool.unplace()
        for lease in leases:
            self._pool.release(lease)
        self._node_queues.dispatch()

    def has_room(self, group_id: bytes, demand: dict) -> bool:
        """Whether a bundle of the group placed here has ``demand`` free now."""
        with self._lock:
            group = self.groups.get(group_id)
            return group is not None and group.state != REMOVED and any(
                b.lease is not None and fits(demand, b.pool.available()) for b in group.bundles)

    def free_bundles(self) -> dict[str, list[dict]]:
        """What each bundle placed here has free now, by group (id hex): published with the node's record,
        for the other nodes' choice of a bundle for work into any bundle (index -1)."""
        with self._lock:
            groups = [(g.id.hex(), g) for g in self.groups.values() if g.state != REMOVED]
            return {h: [b.pool.available() for b in g.bundles if b.lease is not None] for h, g in groups
                    if any(b.lease is not None for b in g.bundles)}

    def holds(self, group_id: bytes) -> bool:
        """Whether a bundle of the group is placed here."""
        with self._lock:
            group = self.groups.get(group_id)
            return group is not None and group.state != REMOVED and any(b.lease for b in group.bundles)


class ClusterGroupSeam:
    """The node's ``groups`` seam on a cluster: the port's answers come from the cluster's records, work
    goes where its strategy says (``route`` here; ``target`` for the node's placement)."""

    def __init__(self, host: BundleHost, cluster: ClusterGroups):
        self.host = host
        self.cluster = cluster
        self.node_id = host.node_id
        self.view = None  # the ClusterView, once attached
        # the port's answers (the node's requests and its own runtime) are the cluster's records'
        self.create, self.remove, self.remove_job = cluster.create, cluster.remove, cluster.remove_job
        self.ready, self.wait, self.table, self.find = cluster.ready, cluster.wait, cluster.table, cluster.find

    def before_dispatch(self) -> None:
        self.host.before_dispatch()

    # where work goes
    def route(self, strategy, actor: bool = False):
        """The queues here of work with ``strategy`` (its bundle's, when that bundle is here), or (None, None)
        when it goes elsewhere or waits (``target`` says which), or (None, error) when it can never run."""
        if type(strategy) is NodeAffinitySchedulingStrategy:
            if strategy.soft or strategy.node_id == self.node_id or self._alive(strategy.node_id):
                return None, None
            return self.host.route(strategy, actor)  # the node named is unknown or dead: the error
        group_id = group_id_of(strategy)
        if group_id is None:
            return None, None
        where = self._where(group_id, strategy.placement_group_bundle_index)
        if isinstance(where, BaseException):
            return None, where
        if where == self.node_id:
            return self.host.route(strategy, actor)
        return None, None

    def target(self, strategy, demand: dict | None = None):
        """Where work with ``strategy`` (needing ``demand``) goes: a node id (this one's included), ``WAIT``
        (its group is not placed yet), an exception (it can never run), or None (the default placement
        decides)."""
        if type(strategy) is NodeAffinitySchedulingStrategy:
            if strategy.node_id == self.node_id or self._alive(strategy.node_id):
                return strategy.node_id
            return None
        group_id = group_id_of(strategy)
        if group_id is None:
            return None
        return self._where(group_id, strategy.placement_group_bundle_index, demand)

    def _where(self, group_id: bytes, index: int, demand: dict | None = None):
        if index < 0 and self.host.holds(group_id):
            # any bundle: one here first, while one here has room (work already routed here runs here);
            # else a bundle of another node that can hold it, where it may be free (work waiting here for
            # a busy bundle while another node's stays free would wait for as long as the work here runs:
            # forever, behind an actor)
            if demand is None or self.host.has_room(group_id, demand):
                return self.node_id
            # (WAIT: the group's record does not say yet where its other bundles are)
            elsewhere = self.cluster.where(group_id, index, demand, besides=self.node_id)
            return self.node_id if elsewhere is None else elsewhere
        return self.cluster.where(group_id, index, demand)

    def _alive(self, node_id: str) -> bool:
        return self.view is not None and self.view.alive(node_id)


__all__ = ["WAIT", "BundleHost", "ClusterGroupSeam"]
