"""Prometheus metrics: each node's ``/metrics`` (and a single-machine driver's, with ``_metrics_export_port``).

``exposition(node)`` gives the text a scrape gets, for any HTTP server (the head's dashboard serves it at its
own address); ``MetricsServer`` is the plain one every node daemon runs on ``--metrics-export-port``.
What is shown and under which names: ``collector.py``; what a node keeps between scrapes: ``node_side.py``.

prometheus_client (and http.server) load with the first of ``exposition``, ``driver_exposition`` or
``MetricsServer`` (``serve.py``), never with the node: a daemon binds its metrics port as it starts (the port
is known and recorded at once), and an ``Endpoint`` loads the server when the first scrape comes.
"""

from __future__ import annotations

import select
import socket
import threading

from ..common.sockets import listening

_LAZY = {"exposition", "driver_exposition", "MetricsServer", "DEFAULT_PATH"}


def __getattr__(name: str):
    if name in _LAZY:  # prometheus_client loads with the first of them
        from . import serve

        return getattr(serve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for ``MetricsServer`` (``port`` 0: a free one). Raises ``OSError`` saying which
    flag to change when the port is taken."""
    return listening(host, port, 16, "cannot serve metrics on {host}:{port}: {reason}; another process uses that "
                                     "port: pick another one (--metrics-export-port, or _metrics_export_port= in "
                                     "init; 0 picks a free port)")


def check_port(value, where: str) -> int:
    """``value`` as a port to serve metrics on (0: a free one), or a ``ValueError`` naming ``where`` it came from."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{where} must be a port number from 0 to 65535 (0 picks a free port), got {value!r}.")
    return value


def driver_socket(port) -> socket.socket:
    """``init(_metrics_export_port=port)`` of a single-machine driver: its socket on 127.0.0.1, bound before
    the backend starts anything (a port taken fails ``init`` with nothing left behind)."""
    return bind("127.0.0.1", check_port(port, "init(): _metrics_export_port"))


class Endpoint:
    """``/metrics`` on a bound socket, loaded when the first scrape comes: until then the process has not
    imported prometheus_client and http.server (about 40 ms and 4 MiB), and a thread waits for a connection.
    ``expose()`` -> ``(body, content type)``, made by ``make_expose(serve)`` once loaded."""

    def __init__(self, sock: socket.socket, make_expose, log=None):
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.server = None
        self._make_expose = make_expose
        self._log = log
        self._closed = False
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="anyray-metrics", daemon=True).start()

    def _serve(self) -> None:
        try:
            while not select.select([self.sock], [], [], 1.0)[0]:
                if self._closed:
                    return
            from . import serve

            with self._lock:
                if not self._closed:
                    self.server = serve.MetricsServer(self.sock, self._make_expose(serve))
        except (OSError, ValueError):
            return  # closed meanwhile
        except Exception as exc:  # noqa: BLE001 - the node works without its metrics; its log says why
            if self._log is not None:
                self._log(f"cannot serve /metrics: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            server, self.server = self.server, None
        if server is not None:
            server.close()
        else:
            self.sock.close()


def serve_driver(node, sock: socket.socket) -> Endpoint:
    """Serve ``/metrics`` on ``sock`` (``driver_socket``): of ``node`` (the multiprocess backend's), or of the
    driver's own user metrics when ``node`` is None (local)."""
    if node is None:
        return Endpoint(sock, lambda serve: serve.driver_exposition())
    return Endpoint(sock, lambda serve: (lambda: serve.exposition(node)))


def serve_node(node, host: str, port, head: bool, log) -> Endpoint:
    """A node daemon's ``/metrics`` on ``host``:``port`` (``--metrics-export-port``; 0: a free one), bound now so
    the port goes in the node's record. ``head``: the head reports the cluster's placement groups, the other
    nodes do not (Prometheus would count each group once per node)."""
    sock = bind(host, check_port(port, "--metrics-export-port"))
    node.metrics.reports_groups = head
    return Endpoint(sock, lambda serve: (lambda: serve.exposition(node)), log)


__all__ = ["Endpoint", "MetricsServer", "bind", "check_port", "driver_exposition", "driver_socket", "exposition",
           "serve_driver", "serve_node"]
