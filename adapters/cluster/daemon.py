"""A node daemon (``anyray start``): one node of a cluster, serving drivers over authenticated TCP.

The daemon runs the same machinery as the multiprocess backend (scheduler,
worker pool, shared-memory store: ``anyray.adapters.node.Node``) in a
runtime of its own, and adds what a cluster needs: a listener for drivers
(``client``), its record in the metadata store kept alive by a heartbeat
lease, and a record on this machine for ``address="auto"`` and ``anyray
stop``. A head started without ``--metadata`` starts the cluster's own
metadata server (``servers``).

Every connection must prove it knows the cluster token before anything else
is read from it; one that fails is dropped and the daemon goes on. The
token is never logged, shown or sent.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import threading
import time
import traceback
from multiprocessing.connection import AuthenticationError, answer_challenge

from anyray.log import configure_daemon
from anyray.ports.backend import Backend, BackendConfig
from anyray.runtime import Runtime, set_current

from .. import metrics
from ..metadata import MemoryMetadataStore, open_metadata
from ..node import framing
from ..node import messages as m
from ..node.gate import Gate
from ..node.node import Node
from . import files, servers, tls
from .address import TOKEN_CHECK_KEY, token_check
from .client import CLIENT_HELLO, CLIENT_READY, CLIENT_SETUP, _Watchdog, handshake, host_id, nodelay, open_connection
from .daemon_listing import ClusterListing
from .drivers import DriverTable
from .lease import Lease
from .listeners import listen, listen_extra
from .node import ClusterScheduler
from .peers import serve_transfers
from .redaction import redact
from .servers import MEMORY
from .view import NODES, ClusterView

HEARTBEAT_SECONDS = float(os.environ.get("ANYRAY_HEARTBEAT_SECONDS", "1.0"))
LEASE_SECONDS = 3 * HEARTBEAT_SECONDS  # a node whose record is not renewed for this long is dead


_log = logging.getLogger("anyray.node")


def log(message: str) -> None:
    """A line in this daemon's log (its stderr, which `anyray start` keeps in a file): see ``run``."""
    _log.info(message)


class _NodeBackend(Backend):
    """The daemon's own runtime's backend: one node, with the cluster's metadata store."""

    name = "node"

    def start(self) -> None:
        self.metadata = self.config.options["metadata"]
        self.node = Node.from_config(self.config, self.metadata, self.events, ClusterScheduler)
        self.scheduler = self.node.scheduler
        self.object_store = self.node.store

    def shutdown(self) -> None:
        node = getattr(self, "node", None)
        if node is not None:
            node.close()


def refuse_a_second_cluster(metadata, token: bytes) -> None:
    """A head given a metadata store whose live nodes belong to another cluster (another token) would split
    it: the cluster goes on without a head (every node is a peer), so a node joins it instead."""
    check = metadata.get(TOKEN_CHECK_KEY)
    if check is None or check == token_check(token).encode():
        return
    if next(iter(metadata.scan(NODES)), None) is not None:
        raise RuntimeError(
            "the metadata store already holds a running cluster (with another token); a new head would split "
            "it. Add this node to it with `anyray start --address <the metadata URL>` (and its token file or "
            "Redis password), or stop that cluster first.")


class NodeDaemon(ClusterListing):
    lease_seconds = LEASE_SECONDS  # what `anyray status` says a lease lasts

    def __init__(self, *, head: bool, join: str | None, host: str, port: int, num_cpus, num_gpus, resources: dict,
                 object_store_memory, metadata: str | None, token: bytes, directory: str, metadata_port: int = 0,
                 redis_password: str | None = None, settings: dict | None = None,
                 server: servers.Launch | None = None):
        self.head, self.join, self.host, self.port = head, join, host, port
        self.redis_password = redis_password
        # ray_client_port (listened on when free, unless given), node_manager_port and object_manager_port
        # (fixed extra ports; transfers use the latter), and Ray's dashboard flags (a head serves the dashboard).
        self.settings = dict(settings or {})
        # TLS on every TCP port (``tls``): the files given (``--tls``'s, or the user's), else the environment's
        self.tls = tls.TLSFiles(**self.settings["tls"]).check() if self.settings.get("tls") else tls.from_env()
        self._extra_socks: list[socket.socket] = []
        self.metrics = None  # /metrics (``--metrics-export-port``)
        self._gates: list[Gate] = []  # each listener's: the connections not authenticated yet
        self.object_address = None
        self.token = token
        self.directory = directory
        self.resources_args = (num_cpus, num_gpus, resources, object_store_memory)
        self.metadata_url = metadata
        self.metadata_port = metadata_port
        self.server = None
        self._launch = server  # the private metadata server, started early (``boot``)
        self.metadata = None
        self.runtime = None
        self.record_file = None
        self._stop = threading.Event()
        self.lapsed = False
        self.lease = None  # this node's record in the metadata store (``lease.py``)
        self._sock = None
        self.address = ""
        self.host_id = host_id()
        self.started = time.time()
        self.dashboard = None  # the cluster's dashboard, on a head that serves one
        self.drivers = None  # the drivers (jobs) that connected here (drivers.DriverTable)

    def __repr__(self) -> str:
        return f"NodeDaemon({self.address or 'starting'})"

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        url = self.metadata_url
        kind = None
        if url in ("redis", "etcd"):
            kind, url = url, None
        tls.use(self.tls)  # this daemon's own connections (to the head, other nodes, transfers) too
        if url == MEMORY and self.head:  # a driver's private one-node cluster: no server to start, no client
            self.metadata_kind, self.metadata = MEMORY, MemoryMetadataStore()
        elif url is None and self.head:
            launch = self._launch or servers.Launch(kind, self.directory, self.host, self.metadata_port,
                                                    password=self.redis_password, tls=self.tls)
            self._launch = None
            try:
                self.server = launch.result()
            except BaseException:
                launch.stop()
                raise
            url = self.server.url
        elif url is None:
            url = tls.metadata_url(self._ask_head("metadata_url"), self.tls)  # with this node's TLS files
        if self.metadata is None:
            self.metadata_kind = {"rediss": "redis"}.get(url.partition("://")[0], url.partition("://")[0])
            self.metadata = open_metadata(url)
            self.metadata_url = url
        if self.head:  # lets a driver that reads the store tell which of its tokens is the cluster's
            refuse_a_second_cluster(self.metadata, self.token)
            self.metadata.put(TOKEN_CHECK_KEY, token_check(self.token).encode())
        num_cpus, num_gpus, resources, object_store_memory = self.resources_args
        config = BackendConfig(num_cpus=num_cpus, num_gpus=num_gpus, resources=resources,
                               object_store_memory=object_store_memory, namespace="anyray-node",
                               options={"metadata": self.metadata})
        self.runtime = Runtime(_NodeBackend, config)
        set_current(self.runtime)
        self.node = self.runtime.backend.node
        self.drivers = DriverTable(self.node.node_id, self.host)
        self.node.setup["forward_output"] = True  # what tasks print goes to their drivers
        self.node.setup["node_ip"] = self.host  # and each line says where: (task pid=N, ip=HOST)
        self.scheduler = self.node.scheduler
        for op, handler in (("metadata_url", self._op_metadata_url), ("status", self._op_status),
                            ("list", self._op_list), ("list_here", self._op_list_here),
                            ("dashboard_here", lambda worker, rid, args: _dashboard_here(self, args))):
            self.scheduler.register(op, handler)
        self._sock = listen(self.host, self.port, "--port")
        self.port = self._sock.getsockname()[1]
        self.address = f"{self.host}:{self.port}"
        self.ports = {"node": self.port}
        self._extra_socks = listen_extra(self.host, self.settings, self.ports, log)
        if "object manager" in self.ports:  # other nodes read this node's objects there
            self.object_address = f"{self.host}:{self.ports['object manager']}"
        self.metrics = metrics.serve_node(self.node, self.host, self.settings.get("metrics_export_port", 0),
                                          self.head, log)
        self.ports["metrics"] = self.metrics.port
        self.lease = Lease(self.metadata, self.node.node_id, self._record, LEASE_SECONDS, self._lapsed)
        self.lease.register()
        self.scheduler.attach(ClusterView(self.metadata, self.node.node_id, self.token,
                                          on_change=self.scheduler.spill_queued, on_dead=self.scheduler.node_dead,
                                          on_self_lapsed=self.lease.lapsed, lease_seconds=LEASE_SECONDS),
                              direct_tcp=self.host if self.tls is None else None)
        threading.Thread(target=self._heartbeat_loop, name="anyray-heartbeat", daemon=True).start()
        server_tls = tls.ServerTLS(self.tls) if self.tls is not None else None
        for sock in (self._sock, *self._extra_socks):  # the challenge and its deadline, then _serve_client
            self._gates.append(Gate(sock, self.token, self._serve_client, "anyray-node-accept", report=log,
                                    tls=server_tls).start())
        if self.head and self.settings.get("include_dashboard"):
            from ..dashboard import start_on_head  # loaded only on a head that serves the dashboard

            self.dashboard = start_on_head(self, self.settings.get("dashboard_host"),
                                           self.settings.get("dashboard_port"), report=log)
        self.record_file = files.write_node(self.directory, self.port, {
            "pid": os.getpid(), "address": self.address, "node_id": self.node.node_id, "head": self.head,
            "metadata": self.metadata_kind, "started": self.started, "ports": self.ports,
            "tls": self.tls.as_dict() if self.tls is not None else None,
            **{k: v for k, v in self.settings.items() if k.startswith(("dashboard", "include_dashboard"))},
            **({"dashboard_url": self.dashboard.url} if self.dashboard is not None else {})})
        log(f"serving at {self.address} (node {self.node.node_id}, {'head, ' if self.head else ''}"
            f"metadata: {self.metadata_kind}{', TLS' if self.tls is not None else ''})"
            + "".join(f"; {what} on port {port}" for what, port in self.ports.items() if what != "node"))

    def _lapsed(self, why: str) -> None:
        """This node's lease lapsed and no outage of the metadata store excuses it (it was paused, or cut off
        from the store alone, for longer than the lease; or the store was away longer than
        ``gcs_rpc_server_reconnect_timeout_s``): the other nodes have retried its work and restarted its actors
        elsewhere, so this node stops rather than run them twice (``lease.py``)."""
        if self._stop.is_set():
            return  # its own record, deleted as it stops
        log(f"this node stops: {why}")
        self.lapsed = True
        self._stop.set()

    def wait(self) -> None:
        while not self._stop.wait(1.0):
            pass

    def stop(self, *_args) -> None:
        self._stop.set()

    def close(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()
        for gate in self._gates:
            gate.close()
        if self.metrics is not None:
            self.metrics.close()
        for sock in (self._sock, *self._extra_socks):
            if sock is None:
                continue
            try:
                sock.close()
            except OSError:
                pass
        if self.record_file:
            try:
                os.unlink(self.record_file)
            except OSError:
                pass
        if self.lease is not None:
            self.lease.close()
        if hasattr(self.metadata, "hurry"):  # the store's calls stop waiting out an outage: this node stops
            self.metadata.hurry()
        if self.metadata is not None and self.runtime is not None:
            try:
                if self.scheduler.cluster is not None and not self.lapsed:
                    self.scheduler.cluster.record_death(json.loads(self._record()), "stopped")
                self.metadata.delete(NODES + self.node.node_id)
            except Exception:  # noqa: BLE001 - the server may be gone; the lease lapses anyway
                pass
        if self.runtime is not None:
            set_current(None)
            self.runtime.shutdown()
        if self.metadata is not None:
            self.metadata.close()
        if self.server is not None:
            self.server.stop()
        if self._launch is not None:  # started, never waited for
            self._launch.stop()
        log("stopped")

    # -- the metadata store -----------------------------------------------------------
    def _ask_head(self, op: str):
        from .client import ClientLink

        conn = open_connection(self.join, self.token)
        if self.tls is None and isinstance(conn, tls.TLSConnection):  # a TLS head: serve with the same files
            self.tls = conn.files
            tls.use(self.tls)
        try:
            setup = handshake(conn, "node")
            link = ClientLink(conn, setup, self.join)
            return link.request(op, None, timeout=30)
        finally:
            conn.close()

    def _record(self) -> bytes:
        pool = self.node.pool  # this node's own resources, not the cluster's
        return json.dumps({
            "node_id": self.node.node_id, "address": self.address, "host": socket.gethostname(),
            "pid": os.getpid(), "head": self.head, "resources": pool.total(),
            "available": pool.available(), "started": self.started, "heartbeat": time.time(),
            "lease_seconds": LEASE_SECONDS, "bundles": self.node.scheduler.cluster_groups.host.free_bundles()}).encode()

    def _heartbeat_loop(self) -> None:
        lost = False
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.lease.renew()
            except Exception as exc:  # noqa: BLE001 - keep trying: the store may come back
                if not lost:
                    log(f"lost the metadata store ({type(exc).__name__}); retrying")
                lost = True
                continue
            if lost:
                log("the metadata store is back; registered again")
                lost = False

    # -- clients --------------------------------------------------------------------------
    def _serve_client(self, conn, peer) -> None:
        """A connection whose peer proved it holds the token (the gate checked): the rest of the handshake."""
        try:
            nodelay(conn)
        except OSError:
            pass
        driver = None
        try:
            with _Watchdog(conn):
                answer_challenge(conn, self.token)
                msg = conn.recv_bytes(1 << 16)
                if msg[0] != CLIENT_HELLO:
                    raise AuthenticationError("no hello")
                hello: m.ClientHello = pickle.loads(memoryview(msg)[1:])
                same_host = hello.get("host") == self.host_id
                if hello.get("role") == "driver":  # listed before init returns (it waits for the setup)
                    driver = self.drivers.joined(hello, peer[0], same_host)
                setup = dict(self.node.setup, arena=self.node.arena.path if same_host else None,
                             address=self.address, node_id=self.node.node_id, object_address=self.object_address)
                conn.send_bytes(framing.frame(CLIENT_SETUP, pickle.dumps(setup)))
                msg = conn.recv_bytes(1 << 16)
                if msg[0] != CLIENT_READY:
                    raise AuthenticationError("no ready")
                shared = bool(pickle.loads(memoryview(msg)[1:])) and same_host
        except (AuthenticationError, EOFError, OSError, ValueError, pickle.UnpicklingError, IndexError):
            log(f"refused a connection from {peer[0]}:{peer[1]}: it did not prove it holds the cluster token")
            conn.close()
            if driver is not None:
                self.drivers.left(driver, ran=False)
            return
        role = hello.get("role")
        if role == "transfer":  # another node's object reads: raw ranges of the arena from now on
            serve_transfers(tls.raw_socket(conn), self.node.arena)
            return
        try:
            handle = self.node.scheduler.workers.adopt(hello.get("pid") or 0)
        except Exception:  # noqa: BLE001 - shutting down
            conn.close()
            if driver is not None:
                self.drivers.left(driver)
            return
        peer = role == "node"  # another node reads objects here by pull: it gets their locations
        try:
            self.scheduler.add_client(handle, shared or peer, (hello.get("job_id") or b"",
                                                               hello.get("namespace") or ""), peer=peer)
        except BaseException:
            if driver is not None:
                self.drivers.left(driver, ran=False)
            raise
        try:
            self.scheduler.workers.serve(handle, conn)
        finally:
            if driver is not None:
                self.drivers.left(driver)
        if role == "driver" and hello.get("job_id"):  # its job ended: so do its groups that are not detached
            self.scheduler.cluster_groups.remove_job(hello["job_id"])

    # -- requests of clients ------------------------------------------------------------
    def _op_metadata_url(self, worker, rid, _args):
        if self.metadata_kind == MEMORY:
            raise ValueError("This head is a driver's private one-node cluster (its metadata is in the head's "
                             "memory): no node can join it. Start a cluster with `anyray start --head` to add "
                             "nodes.")
        return self.metadata_url

def _dashboard_here(daemon: NodeDaemon, args):
    """What this node kept for the head's dashboard (``m.DashboardAsk``; see ``dashboard.taps.NodeTaps.answer``).
    The taps start at the first question, so a cluster without a dashboard has none."""
    from ..dashboard.taps import NodeTaps

    ask = m.DashboardAsk._make(args)
    return NodeTaps.of(daemon).answer(ask.what, ask.arg)


def run(*, token: bytes, ready_fd: int | None = None, **options) -> int:
    """Run a node daemon in this process until SIGTERM or Ctrl-C (``anyray start --block``). ``ready_fd``: a
    pipe written to and closed once the node serves and its record is on disk (``launch.spawn`` waits on it)."""
    configure_daemon()
    daemon = NodeDaemon(token=token, **options)
    signal.signal(signal.SIGTERM, daemon.stop)
    signal.signal(signal.SIGINT, daemon.stop)
    try:
        daemon.start()
    except Exception as exc:  # noqa: BLE001 - said on stderr, which `anyray start` shows
        log(f"could not start: {type(exc).__name__}: {redact(exc)}")
        _log.error(redact("".join(traceback.format_exc())))  # redacted before any handler sees it
        daemon.close()
        return 1
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
        except OSError:
            pass
    try:
        daemon.wait()
    finally:
        daemon.close()
    return 0
