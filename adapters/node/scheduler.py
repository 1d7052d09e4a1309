"""The scheduler of one node: resource accounting in the driver, tasks and actors in worker processes.

A task whose dependencies are sealed waits in the FIFO of its demand shape
until its resources are free, then goes to an idle worker (or a new one,
forked in a few milliseconds). A worker runs one task at a time; when it
finishes, the next task of the same shape goes to the same worker on the
same lease. Each actor gets a process of its own, started once the actor's
resources are free; its calls are sent as they are submitted, and the actor
process starts them in order (``ActorHost``).

Workers call back into this scheduler (``REQUEST``) for nested tasks,
actors and ``get``/``put``/``wait``; a worker blocked in ``get`` or ``wait``
lends its CPUs until the answer goes out. The references a worker holds are
held here on its behalf (``Worker.borrowed``), and so are the shared-memory
ranges it reads (``Worker.pins``); both go when the worker does.

A worker that dies mid-task has its task retried up to ``max_retries``
times; an actor whose process dies restarts while ``max_restarts`` allows.

The scheduler is a façade over parts with one role each, which share the
node's one lock and get their collaborators explicitly:

- ``tasks.Tasks``: tasks, from submission to result (``common/queues.py``: the shape queues);
- ``actors.Actors``: the actor lifecycle and the calls to each actor;
- ``supervision.Supervision``: the worker processes, and what they send;
- ``ledger.Ledger``: the references and pins workers hold, and how objects travel;
- ``handlers.Requests``: the requests workers and drivers send;
- ``functions.FunctionTable``, ``introspection`` (records, output, ``anyray list``);
- ``seams.Seams``: where a cluster node adds its own parts (``cluster/node.py``).
"""

from __future__ import annotations

import functools
import threading

from anyray.exceptions import ActorNameTaken
from anyray.ports.scheduler import Scheduler
from anyray.specs import ActorSpec, ActorTaskSpec, TaskSpec

from ..common.names import NamedActors
from ..common.placement_groups import GroupPort, PlacementGroups
from ..common.queues import ShapeQueues
from ..common.resources import ReportsResources, ResourcePool
from .actors import Actors
from .functions import FunctionTable
from .groups import GroupRequests
from .handlers import Requests
from .introspection import listing
from .ledger import Ledger
from .memory_monitor import MemoryMonitor
from .pool import read_results_here
from .seams import Seams
from .store import ArenaObject, SharedObjectStore
from .supervision import Supervision
from .tasks import Tasks


class NodeScheduler(ReportsResources, Scheduler):
    # capability flags (anyray.ports.scheduler); lends_cpus stays False: the driver's threads are not tasks
    # and hold no resources, and a worker's blocking get or wait says so in its request
    runs_here = tracks_handles = lists_state = True

    def __init__(self, session, store: SharedObjectStore, metadata, events, pool: ResourcePool, setup: dict):
        self.events = events
        self.lock = lock = threading.RLock()  # the node's one lock, shared by every part
        self.pool = pool
        self.store = store
        self.metadata = metadata
        self.job = job = (setup["job_id"], setup["namespace"])  # of work the node's own runtime submits
        self.seams = seams = Seams(pool)
        self.names = NamedActors(metadata, self.get_named_actor)
        self.functions = functions = FunctionTable()
        self.ledger = ledger = Ledger(lock, store, seams)
        self.supervision = supervision = Supervision(session, setup, lock, ledger, seams, job)
        self.workers = supervision.pool
        store.read_here = supervision.read_here  # a wait loop's thread reads the results it waits for
        shapes = ShapeQueues(lock, pool, None)
        self.queues = shapes.queues
        self.tasks = tasks = Tasks(lock, store, pool, shapes, ledger, functions, supervision, seams, job)
        shapes.start_task = tasks.start
        # The port's two calls of every task go straight to the part (the methods below say what they do)
        self.submit_task = tasks.submit
        self.run_here = functools.partial(read_results_here, contains=store.contains, worker_of=tasks.worker_of)
        self.actors = actors = Actors(lock, store, shapes, self.names, ledger, functions, supervision, seams, job)
        ledger.handle_of = actors.handle_of
        tasks.call_worker_of = actors.worker_of_call
        self.requests = Requests(lock, pool, store, shapes, ledger, functions, tasks, actors, self.names, seams,
                                 self.cancel)
        supervision.connect(task_result=tasks.task_result, call_result=actors.call_result,
                            on_request=self.requests.on_request, actor_died=actors.died,
                            actor_exited=actors.actor_exited, worker_lost=tasks.worker_lost)
        self.register = self.requests.register  # a node's owner serves more requests (the cluster daemon)
        group_requests = GroupRequests(lock, tasks, actors)
        seams.groups = PlacementGroups(lock, pool, shapes, store.put, group_requests.removed)
        self.register("placement_group", group_requests.serve(lambda: self.groups))
        setup["places_groups"] = self.places_groups  # the port a worker's runtime offers (remote_groups.py)
        self.add_client = supervision.add_client
        self._closing: list = []  # what else shutdown() closes, first to last
        monitor = MemoryMonitor.start_for(supervision, str(setup.get("node_id", "")))  # Ray's OOM policy
        if monitor is not None:
            self._closing.append(monitor.close)
        events.add_source(seams.record_sink.pull)

    @property
    def feasibility(self):
        """Warns about work (and placement groups) no node can ever hold (a seam: ``seams.feasibility``)."""
        return self.seams.feasibility

    @property
    def groups(self):
        """The placement groups (a seam: ``seams.groups``)."""
        return self.seams.groups

    def on_shutdown(self, close) -> None:
        """Call ``close()`` when the node shuts down, before its workers stop."""
        self._closing.append(close)

    # -- the Scheduler port -----------------------------------------------------------------
    def submit_task(self, spec: TaskSpec, held: ArenaObject | None = None, job: tuple | None = None,
                    handed: bool = False) -> None:
        """``handed``: another node of a cluster handed the task here, to run here. (Each node binds
        this name to ``Tasks.submit`` itself: one call less per task.)"""
        self.tasks.submit(spec, held, job, handed)

    def cancel(self, ref, force: bool, recursive: bool) -> None:
        seams = self.seams
        if seams.remote_calls is not None and seams.remote_calls.cancel(ref, force, recursive):
            return
        if seams.placement is not None and seams.placement.cancel(ref, force, recursive):
            return
        if not self.tasks.cancel(ref, force, recursive):
            self.actors.cancel(ref)

    def run_here(self, refs) -> None:
        """The calling thread is about to wait for ``refs``: it reads their results off their workers'
        connections itself. (Each node binds this name to ``read_results_here`` itself.)"""
        read_results_here(refs, self.store.contains, self.tasks.worker_of)

    def create_actor(self, spec: ActorSpec, held: ArenaObject | None = None, job: tuple | None = None) -> None:
        winner = self.actors.create_actor(spec, held, job)
        if winner is not None:
            raise ActorNameTaken(winner)  # get_if_exists, and another caller created it first

    def submit_actor_task(self, spec: ActorTaskSpec, held: ArenaObject | None = None) -> None:
        self.actors.submit_actor_task(spec, held)

    def get_named_actor(self, name: str, namespace: str):
        return self.actors.get_named_actor(name, namespace)

    def list_named_actors(self, namespace):
        return self.names.list(namespace)

    def actor_handles_gone(self, actor_id: bytes) -> None:
        self.actors.actor_handles_gone(actor_id)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        self.actors.kill_actor(actor_id, no_restart)

    @property
    def resource_view(self):
        """What ``cluster_resources()``, ``available_resources()`` and ``nodes()`` report (a seam)."""
        return self.seams.resource_view

    def state(self, kind: str) -> list[dict]:
        """What ``anyray list`` shows of this node: its ``actors``, ``tasks``, ``objects`` or ``workers``."""
        return listing(kind, self.pool.node_id, self.actors.actors, self.tasks.tasks, self.store,
                       self.supervision.workers)

    def list_state(self, kind: str) -> list[dict]:
        """The StatePort (``lists_state``): on one node, the node's own state."""
        return self.state(kind)

    def shutdown(self) -> None:
        for close in self._closing:
            close()
        self.supervision.close()


class GroupNodeScheduler(GroupPort, NodeScheduler):
    """The node of the multiprocess backend: it places groups (``PlacementGroupPort``) with the one-node
    ``PlacementGroups`` in ``seams.groups``. (A cluster node declares the port once its own groups, across
    nodes, are in that seam.)"""
