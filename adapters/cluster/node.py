"""A cluster node's scheduler: the node's own scheduler, with the cluster's parts in its seams.

Placement (``placement.py``). A task runs here when its resources are free
here; otherwise, or when no node here could ever hold it, it goes to another
node that has them free (spillback), by the resource view every node
publishes with its heartbeat (``view.py``). A task handed on runs where it
lands.

Objects (``objects.py``). Every object has one home; a node pulls what lives
elsewhere when something here waits for it, and keeps it alive there while
it refers to it.

Actors (``actors.py``, ``actor_calls.py``). An actor goes where its resources
are free; calls to it go to its node, and it starts again elsewhere when its
node dies (while ``max_restarts`` allows).

Direct calls (``direct_host.py``). A driver on this machine sends a sync actor's calls straight to the
actor's process (``direct.py``, ``node/worker_direct.py``); this node says which processes take them,
and still places, restarts and reports the death of their actors.

Placement groups (``groups.py``, ``group_placer.py``, ``group_host.py``). A group's record lives in the
metadata store; the node its driver is connected to places its bundles over the nodes (``planner.py``), each
node reserving its own; work into a bundle goes to that bundle's node.

Lineage (``lineage.py``). A large result of a task handed on stays where the task ran; this node keeps
the task's description while the result is referenced here, and runs it again if that node dies.

Streams (``streams.py``). What a generator running on another node yields goes
to the node its caller submitted it to, as it is yielded; acks go the other way.

What tasks leave behind (records, output) is filed per job, and the
resources reported are the whole cluster's (``records.py``).
"""

from __future__ import annotations

import concurrent.futures

from anyray.policy import Feasibility

from ..common.placement_groups import GroupPort
from ..node.scheduler import NodeScheduler
from .actor_calls import RemoteCalls
from .actors import RemoteActors
from .direct_host import DirectHost, direct_key
from .group_host import BundleHost, ClusterGroupSeam
from .groups import ClusterGroups
from .lease_host import LeaseHost
from .lineage import Lineage
from .objects import RemoteObjects
from .placement import SpillbackPlacement
from .records import ClusterResources, PerJobOutput, PerJobRecords, Reports, ask_every_node
from .streams import StreamRoutes
from .view import ClusterView


class ClusterScheduler(GroupPort, NodeScheduler):
    """``NodeScheduler`` with the cluster's parts in its seams: other nodes to hand work to (``attach`` a
    ``ClusterView``), their objects and actors, and reports per job."""

    places_groups = True  # the PlacementGroupPort (GroupPort) over the cluster's groups (groups.py)

    def __init__(self, session, store, metadata, events, pool, setup):
        super().__init__(session, store, metadata, events, pool, setup)
        self.cluster: ClusterView | None = None
        self._session, self._setup = session, setup
        threads = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="anyray-pull")
        seams = self.seams
        lock, tasks, ledger, functions = self.lock, self.tasks, self.ledger, self.functions
        seams.objects = objects = RemoteObjects(pool.node_id, lock, store, tasks, ledger, threads)
        seams.placement = placement = SpillbackPlacement(lock, pool, self.queues, tasks, ledger, functions, objects,
                                                         threads)
        seams.remote_actors = actors = RemoteActors(lock, pool, store, metadata, self.names, objects, self.actors,
                                                    ledger, functions, self.requests, self.job)
        seams.remote_calls = calls = RemoteCalls(lock, store, self.actors, actors, objects, ledger, threads)
        seams.record_sink, seams.output_sink = PerJobRecords(), PerJobOutput()
        seams.resource_view = view = ClusterResources(pool)
        seams.feasibility = Feasibility(self._totals, view.infeasible_text)
        direct = DirectHost(self.actors, self.supervision.send, session.path, actors, calls)
        leases = LeaseHost(lock, pool, self.queues, tasks, self.supervision, setup, placement)
        for part in (placement, objects, actors, direct, leases, Reports(seams.record_sink, seams.output_sink,
                                                                 self.ask_every_node)):
            part.register(self.register)
        handlers = self.requests.handlers
        self.streams = streams = StreamRoutes(lock, store, ledger, tasks, self.actors, calls, objects,
                                              handlers["forward"], handlers["actor_call"], self.cancel)
        streams.register(self.register)  # after the handlers it wraps
        placement.on_forward = streams.forwarded
        objects.lineage = placement.lineage = self.lineage = Lineage(lock, store, tasks, objects)
        # Placement groups: the cluster's records answer; this node holds the bundles placed here.
        host = BundleHost.replacing(seams.groups)
        self.cluster_groups = groups = ClusterGroups(metadata, pool.node_id, host, store.put)
        groups.register(self.register)
        seams.groups = placement.groups = actors.groups = seam = ClusterGroupSeam(host, groups)
        self.placement, self.objects, self.remote_actors = placement, objects, actors
        self._parts = (objects, placement, actors, calls, view, streams, groups, seam)
        self._threads = threads
        self.on_shutdown(self._close_cluster)

    def attach(self, cluster: ClusterView, direct_tcp: str | None = None) -> None:
        """Join ``cluster``; ``direct_tcp``: the address this node's processes also take direct calls on (from
        drivers on other machines, and other nodes' drivers), None for none (a node with TLS)."""
        self.cluster = cluster
        directory = self._session.path  # actor processes started from now on take direct calls
        self._setup["direct"] = {"dir": directory, "key": direct_key(cluster.token, directory), "tcp": direct_tcp}
        cluster.on_stream = self.streams.received  # what nodes running this node's generators stream back
        for part in self._parts:
            part.view = cluster

    @property
    def node_id(self) -> str:
        return self.pool.node_id

    def _totals(self) -> list[dict]:
        """Every node's total resources, this one's first: work another node can hold goes there (the
        driver warns when no node can)."""
        cluster = self.cluster
        return [self.pool.total(), *(r["resources"] for r in cluster.totals())] if cluster else [self.pool.total()]

    def spill_queued(self) -> None:
        """Hand queued tasks to nodes that have room now (a node's view changed, or work came back)."""
        self.placement.spill_queued()
        self.cluster_groups.placer.kick()  # a node has room now, or another joined: place pending groups

    def node_dead(self, node_id: str) -> None:
        """``node_id``'s lease lapsed: what it ran for this node runs again; what lived only there is lost."""
        link = self.cluster.existing_link(node_id) if self.cluster else None
        if link is not None:
            link.close()  # every answer still awaited from it fails now: tasks are retried, calls fail
        self.cluster_groups.node_lost(node_id)  # first: work into its bundles waits for them to be placed again
        self.placement.node_lost(node_id)
        self.objects.node_lost(node_id)
        self.remote_actors.node_lost(node_id)
        self.streams.origin_lost()

    def ask_every_node(self, op: str, args) -> list:
        """Ask every other node ``op(args)`` at once; the answers (lists) joined, within ``ASK_SECONDS``."""
        return ask_every_node(self.cluster, op, args)

    def _close_cluster(self) -> None:
        self.cluster_groups.close()
        if self.cluster is not None:
            self.cluster.close()
        self._threads.shutdown(wait=False, cancel_futures=True)
