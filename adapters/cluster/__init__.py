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

from anyray.events import TaskRecord
from anyray.exceptions import GetTimeoutError
from anyray.hookspecs import hookimpl
from anyray.ports.backend import Backend, Capability

from ..common.gaps import CLUSTER_GAPS

PASSWORD_ENV = "ANYRAY_REDIS_PASSWORD"  # the cluster's Redis password, for a driver given an address only
OUTPUT_INTERVAL = 0.2  # seconds between a driver's reads of what its tasks printed


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
    # metadata: "redis", "etcd" or a URL, for the private cluster started without an address (default: kept in
    # its daemon's memory, ``launch.MEMORY``).
    # _redis_password: the password of the cluster's Redis (Ray's name), also the cluster's secret when its head
    # was started with --redis-password.
    # include_dashboard, dashboard_host, dashboard_port: the dashboard of the private cluster (Ray's; a running
    # cluster's head serves its own, so they are ignored with an address, as Ray does).
    accepted_options = frozenset({"token_file", "metadata", "_redis_password", "log_to_driver", "include_dashboard",
                                  "dashboard_host", "dashboard_port"})

    link = None
    _proc = None
    _private_dir = None
    _dashboard: dict = {}  # the private cluster's: its url and token file

    def __init__(self, config, events) -> None:
        super().__init__(config, events)
        self._starting = None
        if config.address is None:  # first: the daemon comes up while this process loads the driver's side
            self._spawn_private()

    def _spawn_private(self) -> None:
        """Start the node daemon of a private one-node cluster; ``start`` waits for it."""
        import secrets

        from . import launch

        cfg = self.config
        if cfg.options.get("_redis_password") is not None:
            raise ValueError("_redis_password= is the password of a running cluster's Redis; pass the cluster's "
                             "address too (init(address='HOST:PORT', _redis_password=...)), or drop it.")
        self._private_dir = tempfile.mkdtemp(prefix="anyray-cluster-")
        self._token = secrets.token_hex(32).encode()
        try:
            self._starting = launch.start(
                directory=self._private_dir, token=self._token, head=True, num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus, resources=cfg.resources, object_store_memory=cfg.object_store_memory,
                metadata=cfg.options.get("metadata") or launch.MEMORY, exit_with_parent=True,
                extra=self._dashboard_settings())
        except BaseException:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None
            raise

    def reference_counters(self):
        """References here are borrowed from the node, as a worker's are (see ``node.link``)."""
        from ..node.link import BorrowCounter

        def objects(free):
            self._objects = BorrowCounter(free, lambda oid: self.link.borrowed(oid))
            return self._objects

        def handles(free):
            self._handles = BorrowCounter(free, lambda actor_id: self.link.handle_borrowed(actor_id))
            return self._handles

        return objects, handles

    def start(self) -> None:
        cfg = self.config
        address = cfg.address
        password = cfg.options.get("_redis_password")
        if address is None:
            starting, token = self._starting, self._token
            self._starting = None
            try:
                try:  # loaded while the daemon comes up
                    from . import direct, driver_side  # noqa: F401
                    from .client import ClientLink, handshake, open_connection
                except BaseException:
                    starting.stop()
                    raise
                self._proc, record = starting.wait()
            except BaseException:
                shutil.rmtree(self._private_dir, ignore_errors=True)
                raise
            address = record["address"]
            self._show_dashboard(record, token)

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
        from .direct import DirectCalls
        from .driver_side import _ClusterScheduler, _ClusterStore
        from .leases import TaskLeases

        self.scheduler = _ClusterScheduler(self.link)
        self.object_store = _ClusterStore(self.link)
        direct = self.scheduler.direct = self.object_store.direct = DirectCalls(self.link, self.object_store._cache,
                                                                               token)
        direct.leases = TaskLeases(direct, super(_ClusterScheduler, self.scheduler).submit_task,
                                   (self.config.job_id, self.config.namespace))
        self.metadata = None

    def _dashboard_settings(self) -> dict | None:
        options = self.config.options
        if not options.get("include_dashboard"):
            return None
        return {"include_dashboard": True, "dashboard_host": options.get("dashboard_host"),
                "dashboard_port": options.get("dashboard_port")}

    def _show_dashboard(self, record: dict, token: bytes) -> None:
        """The private cluster's dashboard: its token in a file of the cluster's directory (0600, removed with
        it), said on stderr as a driver's own dashboard is."""
        if not self.config.options.get("include_dashboard"):
            return
        from .files import new_token

        url = record.get("dashboard_url")
        if url is None:  # Ray's port held by another process: the head goes on without (its log says so)
            print(f"(anyray) no dashboard: port {self.config.options.get('dashboard_port') or 8265} is taken; pass "
                  f"init(dashboard_port=0) for any free one", file=sys.stderr, flush=True)
            return
        self._dashboard = {"dashboard_url": url, "dashboard_token_file": new_token(self._private_dir, token)}
        print(f"(anyray) dashboard at {url} (log in with the token in {self._dashboard['dashboard_token_file']})",
              file=sys.stderr, flush=True)

    def _print_loop(self) -> None:
        while not self._printing.wait(OUTPUT_INTERVAL):
            try:
                self._print_output()
            except (OSError, ConnectionError, GetTimeoutError):
                if self.link is None:
                    return

    def _print_output(self) -> None:
        """Print here what this job's tasks printed on the nodes, each line marked with its worker."""
        from anyray.experimental.bars import write_output

        from ..node import messages as m

        link = self.link
        if link is None:
            return
        for printed in map(m.PrintedLine._make, link.request("output", self.config.job_id, timeout=30)):
            out = sys.stdout if printed.stream == "stdout" else sys.stderr
            write_output(out, printed.text)  # each line marked by its worker: (task pid=N, ip=HOST); bars drawn
        sys.stdout.flush()

    def _pull_records(self) -> list:
        """The records of this job's tasks, from every node (for ``timeline`` and ``error_info``)."""
        from ..node import messages as m

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
        return {"address": self.address, "node_id": node_id, "dashboard_url": None, **self._dashboard}


Backend = ClusterBackend


@hookimpl
def anyray_backends():
    return [ClusterBackend]


@hookimpl
def anyray_commands(subparsers):
    from .cli import add_commands

    add_commands(subparsers)


__all__ = ["ClusterBackend"]
