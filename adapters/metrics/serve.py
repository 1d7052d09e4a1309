"""The HTTP side of the metrics: the exposition of a node, and the small server each node daemon runs
(imported on first use: prometheus_client and http.server cost about 40 ms to import)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from anyray.util.metrics import TABLE, MetricTable

from .collector import NodeCollector, user_families

DEFAULT_PATH = "/metrics"


def _registry(collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def exposition(node) -> tuple[bytes, str]:
    """What a scrape of ``node``'s ``/metrics`` returns: ``(body, content type)``, Prometheus' text format."""
    metrics = node.metrics
    with metrics.registry_lock:
        if metrics.registry is None:
            metrics.registry = _registry(NodeCollector(node))
        registry = metrics.registry
    return generate_latest(registry), CONTENT_TYPE_LATEST


class _DriverCollector:
    """A driver with no node of its own (the local backend): the user metrics its tasks recorded."""

    def __init__(self):
        self.table = MetricTable()

    def collect(self):
        taken = TABLE.take()
        if taken:
            self.table.merge(taken)
        yield from user_families(*self.table.snapshot())


def driver_exposition() -> callable:
    """``exposition`` for a process without a node: a function that returns ``(body, content type)``."""
    registry = _registry(_DriverCollector())
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)


class _Handler(BaseHTTPRequestHandler):
    server_version = "anyray-metrics"

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != DEFAULT_PATH:
            self.send_error(404, f"Only {DEFAULT_PATH} is served here.")
            return
        try:
            body, content_type = self.server.expose()
        except Exception as exc:  # noqa: BLE001 - a scrape that fails says why, the server goes on
            self.send_error(500, f"{type(exc).__name__}: {exc}")
            return
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - no access log: scrapes come every few seconds
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class MetricsServer:
    """Serves ``GET /metrics`` with what ``expose()`` returns, on a socket of its own, from a daemon thread."""

    def __init__(self, sock: socket.socket, expose):
        self.sock = sock
        self.host, self.port = sock.getsockname()[:2]
        server = self._server = _Server(sock.getsockname()[:2], _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.expose = expose
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                        name="anyray-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{DEFAULT_PATH}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


