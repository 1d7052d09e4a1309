"""Prometheus metrics: each node's ``/metrics`` (and a single-machine driver's, with ``_metrics_export_port``).

``exposition(node)`` gives the text a scrape gets, for any HTTP server (the head's dashboard serves it at its
own address); ``MetricsServer`` is the plain one every node daemon runs on ``--metrics-export-port``.
What is shown and under which names: ``collector.py``; what a node keeps between scrapes: ``node_side.py``.

prometheus_client (and http.server) load with the first of ``exposition``, ``driver_exposition`` or
``MetricsServer`` (``serve.py``), never with the node: a daemon binds its metrics port as it starts (``bind``:
the port is known and recorded at once) and loads the server on a thread of its own.
"""

from __future__ import annotations

import socket
import threading

_LAZY = {"exposition", "driver_exposition", "MetricsServer", "DEFAULT_PATH"}


def __getattr__(name: str):
    if name in _LAZY:  # prometheus_client loads with the first of them
        from . import serve

        return getattr(serve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for ``MetricsServer`` (``port`` 0: a free one). Raises ``OSError`` saying which
    flag to change when the port is taken."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror}; another process uses "
                                 f"that port: pick another one (--metrics-export-port, or _metrics_export_port= "
                                 f"in init; 0 picks a free port)") from None
    sock.listen(16)
    return sock


def check_port(value, where: str) -> int:
    """``value`` as a port to serve metrics on (0: a free one), or a ``ValueError`` naming ``where`` it came from."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{where} must be a port number from 0 to 65535 (0 picks a free port), got {value!r}.")
    return value


def driver_socket(port) -> socket.socket:
    """``init(_metrics_export_port=port)`` of a single-machine driver: its socket on 127.0.0.1, bound before
    the backend starts anything (a port taken fails ``init`` with nothing left behind)."""
    return bind("127.0.0.1", check_port(port, "init(): _metrics_export_port"))


def serve_driver(node, sock: socket.socket):
    """Serve ``/metrics`` on ``sock`` (``driver_socket``): of ``node`` (the multiprocess backend's), or of the
    driver's own user metrics when ``node`` is None (local)."""
    from . import serve

    expose = serve.driver_exposition() if node is None else (lambda: serve.exposition(node))
    return serve.MetricsServer(sock, expose)


class NodeEndpoint:
    """A node daemon's ``/metrics``: the port bound at once (``port``, for the node's record), the server
    loaded by ``start`` on a thread of its own (prometheus_client takes about 40 ms to import). ``head``: the
    head reports the cluster's placement groups, the other nodes do not (each would count them again)."""

    def __init__(self, node, host: str, port, head: bool):
        self.node = node
        self.sock = bind(host, check_port(port, "--metrics-export-port"))
        self.port = self.sock.getsockname()[1]
        self.server = None
        node.metrics.reports_groups = head

    def start(self, log) -> None:
        threading.Thread(target=self._serve, args=(log,), name="anyray-metrics-start", daemon=True).start()

    def _serve(self, log) -> None:
        from . import serve

        try:
            self.server = serve.MetricsServer.for_node(self.node, self.sock)
        except Exception as exc:  # noqa: BLE001 - the node works without its metrics; its log says why
            log(f"cannot serve /metrics: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()


__all__ = ["MetricsServer", "NodeEndpoint", "bind", "check_port", "driver_exposition", "driver_socket", "exposition",
           "serve_driver"]
