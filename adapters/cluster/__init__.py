"""The cluster backend: node daemons (``anyray start``) on many machines, metadata in Redis or etcd.

A driver connects to one node over an authenticated TCP connection and
speaks the protocol the node's own workers speak, so everything the
multiprocess backend does, the node does for the driver: its tasks and
actors run in the node's worker processes, and on the node's machine the
driver reads large objects from the node's shared memory without a copy.

``init(backend="cluster")`` without an address starts a private one-node
cluster for the driver (its own daemon and metadata server, stopped at
``shutdown``), the way ``ray.init()`` starts a local Ray; with an address
(``"auto"``, a node's or the metadata server's ``HOST:PORT``,
``ray://HOST:PORT``, ``redis://...``, ``etcd://...``: see ``address``) it
joins a running cluster, whose resources were fixed by ``anyray start``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

from anyray.events import TaskRecord
from anyray.exceptions import ActorNameTaken, GetTimeoutError
from anyray.hookspecs import hookimpl
from anyray.policy import Feasibility, largest
from anyray.ports.backend import Backend, Capability

from ..common.gaps import CLUSTER_GAPS
from ..node import messages as m
from ..node.link import BorrowCounter
from ..node.remote_groups import RemoteGroups
from ..node.remote_ports import RemoteScheduler, RemoteStore
from .direct import DirectCalls
from .direct_watch import DirectWatch
from .leases import TaskLeases


class _ClusterScheduler(RemoteGroups, RemoteScheduler):
    """The driver's scheduler port: forwards to the node, and warns at the call site about work that no
    node of the cluster could ever place (the node's own warning would not reach the driver)."""

    tracks_handles = lists_state = True  # capability flags: see anyray.ports.scheduler (lends_cpus: the node lends)

    REFRESH_SECONDS = 1.0  # how stale the driver's view of the nodes' resources may be when it warns

    def __init__(self, link):
        super().__init__(link)
        self._feasibility = Feasibility(self._totals, _infeasible_text, refresh=self.REFRESH_SECONDS)

    def _totals(self) -> list[dict]:
        return [n["Resources"] for n in self.node.request("resources", "nodes") if n.get("Alive")]

    def list_state(self, kind: str) -> list[dict]:
        """Every node's rows: the node answering asks the others (what ``anyray list`` shows)."""
        self.direct.pass_records_on()
        return self.node.request("list", kind, timeout=60)

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
            self.direct.leases.cancel(sock, ref._id, force)
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


PASSWORD_ENV = "ANYRAY_REDIS_PASSWORD"  # the cluster's Redis password, for a driver given an address only
OUTPUT_INTERVAL = 0.2  # seconds between a driver's reads of what its tasks printed


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


class ClusterBackend(Backend):
    name = "cluster"
    description = "node daemons on many machines (`anyray start`), metadata in Redis or etcd"
    capabilities = frozenset({
        Capability.CONCURRENT, Capability.PROCESSES, Capability.ZERO_COPY, Capability.WORKER_RESTART,
        Capability.ACTOR_RESTART, Capability.FORCE_CANCEL, Capability.INTERRUPT_CANCEL, Capability.MULTI_NODE,
        Capability.TIMELINE, Capability.ERROR_INFO, Capability.RUNTIME_ENV,
        Capability.RUNTIME_ENV_PIP,
    })
    known_gaps = CLUSTER_GAPS
    # token_file: where the cluster token is (default: this machine's, or $ANYRAY_CLUSTER_TOKEN);
    # metadata: "redis", "etcd" or a URL, for the private cluster started without an address.
    # _redis_password: the password of the cluster's Redis (Ray's name), also the cluster's secret when its head
    # was started with --redis-password.
    accepted_options = frozenset({"token_file", "metadata", "_redis_password", "log_to_driver"})

    link = None
    _proc = None
    _private_dir = None

    def reference_counters(self):
        """References here are borrowed from the node, as a worker's are (see ``node.link``)."""
        def objects(free):
            self._objects = BorrowCounter(free, lambda oid: self.link.borrowed(oid))
            return self._objects

        def handles(free):
            self._handles = BorrowCounter(free, lambda actor_id: self.link.handle_borrowed(actor_id))
            return self._handles

        return objects, handles

    def start(self) -> None:
        from . import launch

        cfg = self.config
        address = cfg.address
        password = cfg.options.get("_redis_password")
        if address is None:
            import secrets

            if password is not None:
                raise ValueError("_redis_password= is the password of a running cluster's Redis; pass the cluster's "
                                 "address too (init(address='HOST:PORT', _redis_password=...)), or drop it.")
            self._private_dir = tempfile.mkdtemp(prefix="anyray-cluster-")
            token = secrets.token_hex(32).encode()
            try:
                starting = launch.start(
                    directory=self._private_dir, token=token, head=True, num_cpus=cfg.num_cpus,
                    num_gpus=cfg.num_gpus, resources=cfg.resources, object_store_memory=cfg.object_store_memory,
                    metadata=cfg.options.get("metadata"), exit_with_parent=True)
                try:  # loaded while the daemon comes up
                    from .client import ClientLink, handshake, open_connection
                except BaseException:
                    starting.stop()
                    raise
                self._proc, record = starting.wait()
            except BaseException:
                shutil.rmtree(self._private_dir, ignore_errors=True)
                raise
            address = record["address"]

            try:
                conn = open_connection(address, token)
                setup = handshake(conn, "driver", cfg.job_id, cfg.namespace)
            except BaseException:
                self.shutdown()
                raise
        else:
            given = [name for name, value in (("num_cpus", cfg.num_cpus), ("num_gpus", cfg.num_gpus),
                                               ("resources", cfg.resources),
                                               ("object_store_memory", cfg.object_store_memory)) if value]
            if given:
                raise ValueError(
                    f"When connecting to an existing cluster, {' and '.join(given)} must not be passed to init(): "
                    f"each node's resources are set by `anyray start` on it. Drop them here.")
            if "metadata" in cfg.options:
                raise ValueError("init(metadata=...) chooses the metadata server of a private cluster; a running "
                                 "cluster has its own. Drop it, or drop address=.")
            from .address import connect, resolve
            from .client import ClientLink
            from .redaction import redact

            if password is None:  # a script that says only ray.init(address=...) can still name the secret
                password = os.environ.get(PASSWORD_ENV) or None
            try:
                target = resolve(address, password=password, token_file=cfg.options.get("token_file"))
                conn, setup, address, token = connect(target, "driver", cfg.job_id, cfg.namespace)
            except (OSError, ValueError) as exc:  # said again without any password the address held
                raise type(exc)(redact(exc)) from None
        self.address = address
        self.link = ClientLink(conn, setup, address)
        self.link.object_counter, self.link.handle_counter = self._objects, self._handles
        self.link.start()
        self.events.add_source(self._pull_records)
        self._printing = threading.Event()
        self._printer = threading.Thread(target=self._print_loop, name="anyray-task-output", daemon=True)
        if self.config.options.get("log_to_driver", True):  # Ray's: False shows nothing workers write
            self._printer.start()
        else:
            self._printer = None
        self.scheduler = _ClusterScheduler(self.link)
        self.object_store = _ClusterStore(self.link)
        direct = self.scheduler.direct = self.object_store.direct = DirectCalls(self.link, self.object_store._cache,
                                                                               token)
        direct.leases = TaskLeases(direct, super(_ClusterScheduler, self.scheduler).submit_task,
                                   (self.config.job_id, self.config.namespace))
        self.metadata = None

    def _print_loop(self) -> None:
        while not self._printing.wait(OUTPUT_INTERVAL):
            try:
                self._print_output()
            except (OSError, ConnectionError, GetTimeoutError):
                if self.link is None:
                    return

    def _print_output(self) -> None:
        """Print here what this job's tasks printed on the nodes, each line marked with its worker."""
        link = self.link
        if link is None:
            return
        for printed in map(m.PrintedLine._make, link.request("output", self.config.job_id, timeout=30)):
            out = sys.stdout if printed.stream == "stdout" else sys.stderr
            out.write(printed.text)  # each line marked by its worker: (task pid=N, ip=HOST)
        sys.stdout.flush()

    def _pull_records(self) -> list:
        """The records of this job's tasks, from every node (for ``timeline`` and ``error_info``)."""
        if self.link is None:
            return []
        self.scheduler.direct.pass_records_on()
        return [TaskRecord(*m.RecordRow._make(r)) for r in self.link.request("records", self.config.job_id, timeout=60)]

    def shutdown(self) -> None:
        printer = getattr(self, "_printer", None)
        if printer is not None:
            self._printing.set()
            printer.join(5)
            try:
                self._print_output()  # the last words of the last tasks
            except (OSError, ConnectionError, GetTimeoutError):
                pass
        if self.link is not None:
            if getattr(self, "scheduler", None) is not None:
                self.scheduler.direct.close()
            self.link.close()
            self.link = None
        if self._proc is not None:
            from .launch import stop_pid

            stop_pid(self._proc.pid)
            self._proc.wait()
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            self._proc = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def info(self) -> dict:
        node_id = self.link.setup["node_id"] if self.link is not None else None
        return {"address": self.address, "node_id": node_id, "dashboard_url": None}


Backend = ClusterBackend


@hookimpl
def anyray_backends():
    return [ClusterBackend]


@hookimpl
def anyray_commands(subparsers):
    from .cli import add_commands

    add_commands(subparsers)


__all__ = ["ClusterBackend"]
