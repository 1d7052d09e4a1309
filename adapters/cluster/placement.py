"""Where a task runs on a cluster: here while its resources are free here, else on another node that has
them free (spillback), by the other nodes' published resources (``ClusterView``).

A task handed on runs where it lands (``forward``, received by the other
node's ``forward`` request). The node that handed it keeps its return ids
alive there and reads the small results home as soon as they are sealed
(large ones stay there, with the task's lineage kept here: ``lineage.py``);
if that node dies first, the task runs again (here or elsewhere) while its
``max_retries`` allow.
"""

from __future__ import annotations

import logging

from anyray.exceptions import WorkerCrashedError
from anyray.object_ref import ObjectRef
from anyray.policy import allows_another, fits
from anyray.runtime import current_counter
from anyray.specs import TaskSpec
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ..common.placement_groups import group_id_of
from ..node import messages as m
from ..node.store import to_wire
from .groups import WAIT
from .objects import object_ids
from .peers import PeerLink
from .view import ignore

log = logging.getLogger(__name__)


class SpillbackPlacement:
    """The node's placement seam on a cluster: ``route`` a ready task to another node when it cannot run
    here now, ``spill_queued`` tasks when other nodes have room, and ``cancel`` tasks handed on."""

    def __init__(self, lock, pool, queues: dict, tasks, ledger, functions, objects, threads):
        self.view = None  # the ClusterView, once attached
        self.groups = None  # the node's ClusterGroupSeam (placement groups and node affinity)
        self._lock = lock
        self._pool = pool
        self._queues = queues
        self._tasks = tasks
        self._ledger = ledger
        self._functions = functions
        self._objects = objects
        self._threads = threads
        self._forwarded: dict[str, set] = {}  # node id -> tasks handed to it, not yet back
        self.on_forward = None  # on_forward(task, link): a task was just handed on (a generator's acks follow it)
        self.lineage = None  # the node's Lineage: a task's large results stay where it ran (lineage.py)

    def register(self, register) -> None:
        register("forward", self._op_forward)

    def route(self, task) -> bool:
        """``task`` is ready: True when it went (or is going) to another node."""
        view = self.view
        if view is None or task.spilled or task.state != "waiting":
            return False  # handed here: it runs here
        if getattr(task, "queues", None) is not None:
            return self._to_another_bundle(task)  # in a placement group bundle here: it runs here, unless
            # it may take any bundle and only another node's has room
        demand = task.spec.resources
        node_id = None
        strategy = task.spec.options.get("scheduling_strategy")
        if strategy is not None and type(strategy) is not str and self.groups is not None:
            routed = self._route_by_strategy(task, strategy)
            if routed is not None:
                return routed
        elif strategy == "SPREAD":
            node_id = view.place_spread(demand, self._pool.available(), self._pool.total())
        if node_id is None:
            busy = self._queues.get(task.shape) or not fits(demand, self._pool.available())
            if not (busy or self._pool.infeasible(demand)):
                return False
            node_id = view.place(demand)
        if node_id is None:
            return False
        with self._lock:
            taken = task.state == "waiting"
            if taken:
                task.state = "forwarded"
        if not taken:  # cancelled meanwhile
            view.returned(node_id, demand)
            return True
        self._forward(task, node_id)
        return True

    def _route_by_strategy(self, task, strategy) -> bool | None:
        """A task with a placement group or node affinity strategy: True when it went elsewhere (or waits
        for its group, or failed), False when it runs here, None when the default placement decides."""
        target = self.groups.target(strategy, task.spec.resources)
        if target is None:
            return None
        if target == WAIT:
            self.groups.cluster.park(group_id_of(strategy), lambda: self._tasks.ready(task))
            return True
        if isinstance(target, BaseException):
            self._refuse(task, target)
            return True
        soft = type(strategy) is NodeAffinitySchedulingStrategy and strategy.soft
        demand = task.spec.resources
        if target == self.view.node_id:
            if soft:
                return None
            queues, error = self.groups.route(strategy)
            if error is not None:
                self._refuse(task, error)
                return True
            task.queues = queues
            return False
        if soft and not self.view.fits(target, demand):
            return None
        self.view.charge(target, demand)
        with self._lock:
            taken = task.state == "waiting"
            if taken:
                task.state = "forwarded"
        if not taken:
            self.view.returned(target, demand)
            return True
        self._forward(task, target)
        return True

    def _to_another_bundle(self, task) -> bool:
        """A task into any bundle (index -1) of a group with a bundle here: True when it went to another node
        of the group, whose bundle has room while none here has."""
        strategy = task.spec.options.get("scheduling_strategy")
        if group_id_of(strategy) is None or strategy.placement_group_bundle_index >= 0 or self.groups is None:
            return False
        target = self.groups.target(strategy, task.spec.resources)
        if not isinstance(target, str) or target in (WAIT, self.view.node_id):
            return False
        self.view.charge(target, task.spec.resources)
        with self._lock:
            taken = task.state == "waiting"
            if taken:
                task.state = "forwarded"
        if not taken:
            self.view.returned(target, task.spec.resources)
            return True
        self._forward(task, target)
        return True

    def _refuse(self, task, error: BaseException) -> None:
        with self._lock:
            if task.state != "waiting":
                return
            self._tasks.finish(task)
        self._ledger.fail(task.spec.returns, error)

    def spill_queued(self) -> None:
        """Hand queued tasks to nodes that have room now (a node's view changed, or work came back)."""
        if self.view is None:
            return
        out = []
        with self._lock:
            for queue in self._queues.values():
                while queue:
                    head = queue[0]
                    if callable(head):
                        break
                    if head.state != "queued":
                        queue.popleft()
                        continue
                    if head.spilled:
                        break
                    node_id = self.view.place(head.spec.resources)
                    if node_id is None:
                        break
                    queue.popleft()
                    head.state = "forwarded"
                    out.append((head, node_id))
            out += self._spill_any_bundle()
        for task, node_id in out:
            self._forward(task, node_id)

    def _spill_any_bundle(self) -> list:
        """Under the lock: the tasks queued here for any bundle of a group that another node's bundle of it
        has room for now (by its last heartbeat), taken out, with that node (charged)."""
        groups = self.groups
        if groups is None:
            return []
        out = []
        for group in list(groups.host.groups.values()):
            for queue in group.any.queues.values():
                while queue:
                    head = queue[0]
                    if callable(head):
                        break  # an actor waits for its bundle here: it was placed here
                    if head.state != "queued":
                        queue.popleft()
                        continue
                    if head.spilled:
                        break  # handed here: it runs here
                    target = groups.target(head.spec.options.get("scheduling_strategy"), head.spec.resources)
                    if not isinstance(target, str) or target in (WAIT, self.view.node_id):
                        break
                    queue.popleft()
                    head.state = "forwarded"
                    self.view.charge(target, head.spec.resources)
                    out.append((head, target))
        return out

    def cancel(self, ref, force: bool, recursive: bool) -> bool:
        """Cancel a task handed to another node there; False if it is not such a task."""
        task = self._tasks.task_of(ref._id)
        if task is not None and task.state == "forwarded" and task.node is not None:
            link = self.view.existing_link(task.node)
            if link is not None:
                link.call("cancel", m.CancelRef.pack(ref._id, force, recursive), ignore)
                return True
        return False

    def node_lost(self, node_id: str) -> None:
        """``node_id`` died: what it ran for this node runs again."""
        for task in list(self._forwarded.pop(node_id, ())):
            self._lost(task, node_id, "its lease lapsed")

    def _forward(self, task, node_id: str) -> None:
        spec = task.spec
        try:
            link = self.view.link(node_id)
        except (OSError, PermissionError) as exc:
            log.warning("could not hand %s to node %s: %s; running it here", spec.name, node_id, exc)
            self.view.returned(node_id, spec.resources)
            with self._lock:
                task.state = "waiting"
            self._tasks.ready_here(task)
            return
        task.node = node_id
        self._forwarded.setdefault(node_id, set()).add(task)
        fn = spec.function
        blob = None
        if fn.function_id not in link.functions:
            blob = self._functions.blob(fn)
            link.functions.add(fn.function_id)
        if task.held is not None:
            args = self._ledger.copy_out(task.held)
            inner = task.held.contained_refs
        else:
            args = to_wire(spec.args)
            inner = spec.args.contained_refs
        contained = m.contained_ids(inner) if inner else []
        ids = [r._id for r in spec.deps] + object_ids(contained)
        where = {oid: self._objects.where(oid) for oid in ids}
        return_ids = [r._id for r in spec.returns]
        for oid in return_ids:  # the other node keeps the results until they are read home
            link.hold(oid)
        link.call("forward", m.Forward.pack(
            spec.task_id, fn.function_id, fn.name, blob, args, [r._id for r in spec.deps], return_ids, spec.resources,
            spec.options, spec.parent_task_id, spec.name, contained, task.job, where), ignore)
        if self.on_forward is not None and task.attempts:
            self.on_forward(task, link)
        link.call("get", m.Get.pack(return_ids, False, False),
                  lambda ok, value: self._threads.submit(self._forwarded_back, task, node_id, link, ok, value))

    def _forwarded_back(self, task, node_id: str, link: PeerLink, ok: bool, value) -> None:
        try:
            spec = task.spec
            self._forwarded.get(node_id, set()).discard(task)
            self.view.returned(node_id, spec.resources)
            if not ok:  # the node went away: run it again, elsewhere or here, while retries allow
                self._lost(task, node_id, value)
                return
            lineage = self.lineage
            kept = lineage.keep(task, node_id, value) if lineage is not None else ()  # large ones stay there
            for oid in kept:
                link.unpin(oid)  # not read now: the hold keeps it there
            for got in map(m.GotWithRefs._make, value):
                if got.oid not in kept:
                    self._objects.receive(node_id, link, got.oid, got.wire, got.contained)
            for ref in spec.returns:
                if ref._id not in kept:
                    link.let_go(ref._id)
            with self._lock:
                self._tasks.finish(task)
        except Exception:  # noqa: BLE001 - never lose a task silently
            log.exception("taking back the results of %s from node %s failed", task.spec.name, node_id)
        self.spill_queued()

    def _lost(self, task, node_id: str, error) -> None:
        spec = task.spec
        retries = spec.options["max_retries"]
        with self._lock:
            if task.state != "forwarded":
                return
            retry = allows_another(retries, task.attempts)
            if retry:
                task.attempts += 1
                task.state = "waiting"
                task.node = None
        if retry:
            self._tasks.ready(task)
            return
        with self._lock:
            self._tasks.finish(task)
        self._ledger.fail(spec.returns, WorkerCrashedError(
            f"The node running {spec.name} ({node_id}) died: {error}. Raise max_retries to retry it more often."))

    def _op_forward(self, worker, rid, args):
        """A task another node hands to this one: it runs here."""
        msg = m.Forward._make(args)
        for oid, node_id in msg.where.items():
            self._objects.expect(oid, node_id)
        try:
            call_args, held = self._ledger.args_from(worker, msg.args, msg.contained)
            counter = current_counter()
            function = self._functions.descriptor(worker, msg.fn_id, msg.fn_name, msg.blob)
            spec = TaskSpec(task_id=msg.task_id, function=function, args=call_args,
                            deps=[ObjectRef(i, None, counter) for i in msg.dep_ids],
                            returns=[ObjectRef(i, None, counter) for i in msg.return_ids], resources=msg.resources,
                            options=msg.options, parent_task_id=msg.parent, name=msg.name)
        except Exception as exc:  # noqa: BLE001 - the caller waits for the results: they are this error
            self._ledger.fail([ObjectRef(i) for i in msg.return_ids], exc)
            return None
        self._tasks.submit(spec, held, msg.job, handed=True)
        return None
