"""The dashboard: a web page of what a cluster or a driver runs, its JSON API under ``/api/``, and its login.

It loads only where a dashboard is wanted (a head with ``--include-dashboard`` left on, a driver with
``init(include_dashboard=True)``), so a node that serves none imports none of it.

``start_on_head(daemon, host, port)``: a cluster head's, showing the whole cluster, behind the cluster token.
``start_for_driver(runtime, host, port)``: a single-machine driver's, showing its job, behind a token made for
it and written to a file only its user can read (``Dashboard.token_file``).
"""

from __future__ import annotations

import os
import secrets
import tempfile

from .server import Dashboard
from .sources import ClusterSource, DriverSource
from .taps import NodeTaps, WorkerLogs

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8265  # Ray's


def start_on_head(daemon, host: str | None = None, port: int | None = None, report=None) -> Dashboard | None:
    """Serve the cluster's dashboard from the head's daemon; the visitor logs in with the cluster token (or the
    Redis password it was derived from, for a head started with ``--redis-password``). On a TLS cluster it
    serves https with the head's certificate.

    On Ray's default port, a port another process holds is said through ``report`` and the head goes on
    without a dashboard (None); a port the user chose must be free (``OSError``)."""
    from ..cluster.address import token_from_password  # a head started with --redis-password: it logs in too

    try:
        dashboard = Dashboard(None, daemon.token, host or DEFAULT_HOST, DEFAULT_PORT if port is None else port,
                              derive=token_from_password, tls=daemon.tls)
    except OSError as exc:
        if port is not None or report is None:
            raise
        report(f"no dashboard: {exc.strerror or exc}")
        return None
    dashboard.serve_metrics(daemon.node)
    from .jobs_http import JobRoutes  # `anyray job submit` and JobSubmissionClient: Ray's REST paths

    dashboard.add_routes(JobRoutes.for_head(daemon))
    dashboard.serve(ClusterSource(daemon, NodeTaps.of(daemon)))
    if report is not None:
        report(f"dashboard at {dashboard.url} (log in with the cluster token)")
    return dashboard


def start_for_driver(runtime, host: str | None = None, port: int | None = None) -> Dashboard:
    """Serve this driver's dashboard. The token is new, in ``dashboard.token_file`` (mode 0600), removed by
    ``close``. On a backend whose workers run on a node of this process (multiprocess), their output is
    forwarded here too, so each worker's log shows."""
    logs = None
    node = getattr(runtime.backend, "node", None)  # the multiprocess backend's node, in this process
    if node is not None:
        node.setup["forward_output"] = True  # workers started from now on send what they print
        logs = WorkerLogs.install(node.scheduler.seams, node.node_id)
    token = secrets.token_urlsafe(32).encode()
    fd, path = tempfile.mkstemp(prefix="anyray-dashboard-", suffix=".token")  # mode 0600
    try:
        os.write(fd, token)
    finally:
        os.close(fd)
    try:
        dashboard = Dashboard(None, token, host or DEFAULT_HOST, DEFAULT_PORT if port is None else port)
    except BaseException:
        os.unlink(path)
        raise
    dashboard.token_file = path
    if node is not None:
        dashboard.serve_metrics(node)
    dashboard.serve(DriverSource(runtime, logs))
    return dashboard


__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "start_for_driver", "start_on_head"]
