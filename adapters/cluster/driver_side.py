"""The driver's side of the cluster backend: its scheduler and object store ports, which forward to its node.

Apart from the package (``__init__``) so that importing the backend loads little: a driver that starts a
private cluster starts its node daemon first, and loads these (and the node's link) while the daemon comes up.
"""

from __future__ import annotations

import time

from anyray.exceptions import ActorNameTaken
from anyray.policy import Feasibility, largest

from ..node import messages as m
from ..node.remote_groups import RemoteGroups
from ..node.remote_ports import RemoteScheduler, RemoteStore


class _ClusterScheduler(RemoteGroups, RemoteScheduler):
    """The driver's scheduler port: forwards to the node, and warns at the call site about work that no
    node of the cluster could ever place (the node's own warning would not reach the driver)."""

    # capability flags: see anyray.ports.scheduler (lends_cpus: the node lends); jobs: every node's drivers
    tracks_handles = lists_state = lists_jobs = True

    REFRESH_SECONDS = 1.0  # how stale the driver's view of the nodes' resources may be when it warns

    def __init__(self, link):
        super().__init__(link)
        self._feasibility = Feasibility(self._totals, _infeasible_text, refresh=self.REFRESH_SECONDS)

    def _totals(self) -> list[dict]:
        return [n["Resources"] for n in self.node.request("resources", "nodes") if n.get("Alive")]

    def list_state(self, kind: str) -> list[dict]:
        """Every node's rows: the node answering asks the others (what ``anyray list`` shows); the jobs are the
        drivers that connected to a node (``drivers.DriverTable``)."""
        self.direct.pass_records_on()
        rows = self.node.request("list", "drivers" if kind == "jobs" else kind, timeout=60)
        if kind == "tasks" and self.direct.leases is not None:  # this driver's tasks on leases, or parked here
            from .leases import task_rows

            rows += task_rows(self.direct.leases, self.node.setup["node_id"])
        return rows

    def _check(self, key: bytes, name: str, demand: dict) -> None:
        self._feasibility.check(key, name, demand)

    def submit_task(self, spec) -> None:
        if spec.resources:
            self._check(spec.function.function_id, spec.name, spec.resources)
        direct = self.direct
        if direct.leases.submit(spec):
            return
        if direct.here or direct.waiting:
            direct.promote(_passed_on(spec))
        super().submit_task(spec)

    def submit_actor_task(self, spec) -> None:
        direct = self.direct
        if direct.submit(spec):
            return
        if direct.here or direct.waiting:
            direct.promote(_passed_on(spec))
        super().submit_actor_task(spec)

    def kill_actor(self, actor_id, no_restart) -> None:
        self.direct.stop(actor_id)  # a call made after the kill goes behind it, through the node
        super().kill_actor(actor_id, no_restart)

    def cancel(self, ref, force, recursive) -> None:
        sock = self.direct.waiting.get(ref._id)
        if sock is not None and sock.leased:  # a task on a leased worker: the node interrupts it there
            self.direct.leases.cancel(sock, ref._id, force, recursive)
            return
        if sock is not None:  # a direct call: the node interrupts it in the actor's process
            self.node.tell("direct_cancel", m.DirectCancel.pack(sock.actor_id, ref._id))
            return
        super().cancel(ref, force, recursive)

    def create_actor(self, spec):
        if spec.resources:
            self._check(spec.actor_id, spec.cls.name, spec.resources)
        direct = self.direct
        if direct.here or direct.waiting:
            direct.promote(_passed_on(spec))
        direct.created(spec.actor_id)
        winner = super().create_actor(spec)
        if winner is not None:  # get_if_exists lost the race for the name
            raise ActorNameTaken(winner)


def _passed_on(spec) -> list:
    """The object ids a task, actor or call passes on: its dependencies and the references in its arguments."""
    ids = [r._id for r in spec.deps]
    if spec.args is not None and spec.args.contained_refs:
        ids.extend(r._id for r in spec.args.contained_refs if getattr(r, "_actor_id", None) is None)
    return ids


def _infeasible_text(name: str, demand: dict, totals: list[dict]) -> str:
    return (f"{name} needs {demand} but no node of the cluster has that much (the most any node has: "
            f"{largest(demand, totals)}); it will wait until a node that has it joins "
            f"(`anyray start --resources ...`).")


class _ClusterStore(RemoteStore):
    """The driver's object store port: what this driver put or read stays here while it holds a
    reference (objects never change), so reading it again costs no round trip to the node."""

    def __init__(self, node):
        super().__init__(node)
        self._cache: dict[bytes, object] = {}
        self._sealed: set[bytes] = set()  # ids a wait found ready: they stay ready while referenced

    def put(self, ref, obj) -> None:
        node, oid = self.node, ref._id
        contained = m.contained_ids(obj.contained_refs)
        if contained and (self.direct.here or self.direct.waiting):
            self.direct.promote([i for kind, i in contained if kind == m.OBJECT])
        if obj.nbytes < node.inline_max or not node.shared or node.setup.get("spilling"):
            # bytes, or written into shared memory and not kept here: a node that spills may move it to disk
            wire = node.to_node(obj)  # the caller may change its arrays from now on
            node.tell("put", m.Put.pack(oid, wire, contained))
            if obj.nbytes < node.inline_max:
                self._cache[oid] = node.from_wire(oid, wire)
            return
        # Written into the node's shared memory and kept here as views of it (pinned for this driver);
        # a Ctrl-C waits for the views, which alone give the pin back.
        with node.deferring():
            wire = node.to_node(obj)
            node.tell("put_kept", m.Put.pack(oid, wire, contained))
            self._cache[oid] = node.from_wire(oid, wire)

    def contains(self, ref) -> bool:
        return ref._id in self._cache

    def get(self, refs, timeout):
        cache = self._cache
        try:
            return [cache[r._id] for r in refs]
        except KeyError:
            pass
        direct = self.direct
        if direct.waiting:  # results of direct calls: read from the actors' sockets
            deadline = None if timeout is None else time.monotonic() + timeout
            direct.collect([r._id for r in refs], deadline)
            if timeout is not None:
                timeout = max(deadline - time.monotonic(), 0)
            try:
                return [cache[r._id] for r in refs]
            except KeyError:
                pass
        missing = [r for r in refs if r._id not in cache]
        if direct.waiting:
            direct.read_in_background()  # this thread waits for the node now
        got = dict(zip((r._id for r in missing), super().get(missing, timeout)))
        node, sealed = self.node, self._sealed
        for oid, obj in got.items():
            sealed.add(oid)
            # Kept: small objects, and views of shared memory (a large pickle stream would be a private copy).
            # Not views on a node that spills: they would pin the object here for as long as its ref lives.
            if len(obj.data) < node.inline_max and (node.shared or obj.nbytes < node.inline_max) and (
                    obj.nbytes < node.inline_max or not node.setup.get("spilling")):
                cache[oid] = obj
        return [cache[r._id] if r._id in cache else got[r._id] for r in refs]

    def wait(self, refs, num_returns, timeout):
        known, cache = self._sealed, self._cache
        ready = {r._id for r in refs if r._id in known or r._id in cache}
        if len(ready) >= num_returns:
            return ready
        direct = self.direct
        if direct.waiting or direct.here:
            ids = [r._id for r in refs]
            rest = [oid for oid in ids if oid not in ready]
            if all(oid in direct.waiting for oid in rest):  # only direct calls' results to wait for
                deadline = None if timeout is None else time.monotonic() + timeout
                return ready | direct.wait(rest, num_returns - len(ready), deadline)
            direct.promote(ids)  # the node answers for all of them
            direct.read_in_background()
        ready = super().wait(refs, num_returns, timeout)
        known.update(ready)
        return ready

    def watch(self, ids):
        direct = self.direct
        if (direct.waiting or direct.here) and not direct.node_may_watch(ids):
            from .direct_watch import DirectWatch

            return DirectWatch(direct, ids)  # a loop over direct results alone: its index is kept here
        return super().watch(ids)

    def free(self, refs) -> None:
        cache, known = self._cache, self._sealed
        direct = self.direct
        for r in refs:
            oid = r if isinstance(r, bytes) else r._id
            cache.pop(oid, None)
            known.discard(oid)
            if direct.here or direct.waiting:
                direct.forget(oid)
        super().free(refs)
