"""The dashboard's HTTP server: the page, its login, and the JSON API under ``/api/``.

The stdlib's ``ThreadingHTTPServer`` on a daemon thread: chosen by measurement over aiohttp and
starlette + uvicorn (``benchmarks/dashboard_stacks.py``: the least import time and memory added to the head,
and the most requests per second of ``/api/nodes`` on one connection), and it adds no dependency.

Routes (GET unless said): ``/`` the page (a visitor without a session is sent to ``/login``); ``/login`` the form,
POST it with ``token``; POST ``/logout``; ``/static/<file>``; ``/api/<kind>`` for the kinds of
``sources.KINDS``; ``/api/workers/<id>/log``; ``/api/timeline`` (a Chrome trace, as a download); ``/api/info``.
Routes added with ``Dashboard.add_route`` (any method, behind the login) come before the built-in ones.
An ``/api/`` request without a session or bearer token is answered 401.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from .auth import Gatekeeper
from .sources import KINDS, this_process

_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".png": "image/png"}
_STATIC = ("app.js", "style.css")
_MAX_FORM = 4096  # a login form is small: longer bodies are refused unread
_MAX_JSON = 1 << 20  # a JSON request's body (read_json), at most
_HANDSHAKE_SECONDS = 10  # a TLS visitor's handshake, at most


def https_context(files) -> ssl.SSLContext:
    """The TLS context of a dashboard on a TLS cluster: the node's certificate (the cluster CA signed it) and
    key (``files``: ``cluster.tls.TLSFiles``). Visitors show no certificate: they log in with the token."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"The dashboard could not load the TLS certificate {files.cert} and key {files.key}: "
                         f"{getattr(exc, 'reason', None) or exc.strerror or exc}.") from None
    return ctx


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "anyray-dashboard"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection ends (and its thread with it)

    # -- answers -----------------------------------------------------------------------------
    def send_body(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, value, headers: dict | None = None) -> None:
        self.send_body(status, json.dumps(value, default=str).encode(), "application/json", headers)

    def read_json(self, limit: int = _MAX_JSON):
        """The request's JSON body (None for none); ValueError saying what was wrong with it."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= limit:
            self.close_connection = True
            raise ValueError(f"the request's body must be JSON of at most {limit} bytes, with its Content-Length")
        if not length:
            return None
        try:
            return json.loads(self.rfile.read(length))
        except ValueError as exc:
            raise ValueError(f"the request's body is not JSON: {exc}") from None

    def _redirect(self, where: str, headers: dict | None = None) -> None:
        self.send_body(303, b"", "text/plain", {"Location": where, **(headers or {})})

    def _login_page(self, status: int = 200, error: str = "") -> None:
        page = _static("login.html").decode().replace("{{error}}", error)
        self.send_body(status, page.encode(), _TYPES[".html"])

    def log_message(self, format, *args) -> None:  # noqa: A002 - no access log: the dashboard logs nothing
        pass

    # -- requests ----------------------------------------------------------------------------
    @property
    def _gate(self) -> Gatekeeper:
        return self.server.gate

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/login":
            return self._login_page()
        if path.startswith("/static/") and path[len("/static/"):] in _STATIC:
            name = path[len("/static/"):]
            return self.send_body(200, _static(name), _TYPES["." + name.rpartition(".")[2]])
        if path == "/metrics" and self.server.metrics is not None:  # Prometheus scrapes as at the node's port
            body, content_type = self.server.metrics()
            return self.send_body(200, body, content_type)
        if not self._allowed(path):
            return None
        if self._routed("GET", path):
            return None
        if path in ("/", "/index.html"):
            return self.send_body(200, _static("index.html"), _TYPES[".html"])
        if path.startswith("/api/"):
            return self._api(path[len("/api/"):].strip("/"))
        self.send_json(404, {"error": f"no page at {path}"})

    def _allowed(self, path: str) -> bool:
        """Whether the visitor is logged in (or sent the token); if not, answered: 401 under /api/, else the
        login page."""
        if self._gate.allows(self.headers):
            return True
        if path.startswith("/api/"):
            self.close_connection = True  # a body, if the request has one, is left unread
            self.send_json(401, {"error": "log in first: POST the cluster token to /login, or send it as "
                                          "'Authorization: Bearer <token>'"})
        else:
            self._redirect("/login")
        return False

    def _routed(self, method: str, path: str) -> bool:
        """Answer with a router added by ``Dashboard.add_routes`` or ``add_route``, if one claims the request."""
        router = next((r for r in self.server.routers if r.claims(method, path)), None)
        if router is None:
            return False
        try:
            router.handle(self, method, path, urllib.parse.urlsplit(self.path).query)
        except ValueError as exc:  # the request was wrong: said to the caller
            self.close_connection = True  # a body may be left unread
            self.send_json(400, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - said to the caller; the server goes on
            self.close_connection = True
            self.send_json(500, {"error": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc(limit=8)})
        return True

    def _other(self, method: str) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if self._allowed(path) and not self._routed(method, path):
            self.send_json(405, {"error": f"nothing at {path} takes {method}"})

    def do_DELETE(self) -> None:
        self._other("DELETE")

    def do_PUT(self) -> None:
        self._other("PUT")

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/logout":
            return self._redirect("/login", {"Set-Cookie": Gatekeeper.logout_cookie()})
        if path != "/login":
            return self._other("POST")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM:
            self.close_connection = True
            return self._login_page(400, "The form was not a login form.")
        form = urllib.parse.parse_qs(self.rfile.read(length).decode("utf-8", "replace"))
        offered = (form.get("token") or [""])[0]
        if offered and self._gate.login_matches(offered):
            return self._redirect("/", {"Set-Cookie": self._gate.session_cookie()})
        self._login_page(401, "That is not the cluster's token.")

    def _api(self, route: str) -> None:
        source = self.server.source
        try:
            if route == "info":
                return self.send_json(200, {**source.describe(), **this_process()})
            if route == "timeline":
                return self.send_json(200, source.timeline(),
                                  {"Content-Disposition": 'attachment; filename="anyray-timeline.json"'})
            parts = route.split("/")
            if len(parts) == 3 and parts[0] == "workers" and parts[2] == "log":
                log = source.log(urllib.parse.unquote(parts[1]))
                if log is None:
                    return self.send_json(404, {"error": f"worker {parts[1]!r} printed nothing this dashboard kept"})
                return self.send_json(200, log)
            if route in KINDS:
                return self.send_json(200, source.rows(route))
            return self.send_json(404, {"error": f"no API at /api/{route}; there are "
                                             f"{', '.join(KINDS)}, workers/<id>/log, timeline and info"})
        except ConnectionError as exc:  # the job ended while the page looked
            return self.send_json(503, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the page shows it; the server goes on
            return self.send_json(500, {"error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc(limit=8)})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    tls_context: ssl.SSLContext | None = None  # https: each connection's handshake on its own thread

    def finish_request(self, request, client_address) -> None:
        if self.tls_context is None:
            return super().finish_request(request, client_address)
        request.settimeout(_HANDSHAKE_SECONDS)
        try:
            tls_request = self.tls_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):  # a visitor speaking plain HTTP, or gone: nothing to answer
            return None
        try:
            super().finish_request(tls_request, client_address)
        finally:
            tls_request.close()


class _Route:
    """``add_route``'s router: one method at a path prefix and the paths under it."""

    def __init__(self, method: str, prefix: str, answer):
        self.method, self.prefix, self.answer = method, prefix, answer

    def claims(self, method: str, path: str) -> bool:
        return method == self.method and (path == self.prefix or path.startswith(self.prefix.rstrip("/") + "/"))

    def handle(self, handler, method: str, path: str, query: str) -> None:
        self.answer(handler, path)

    def close(self) -> None:
        pass


class _Server6(_Server):
    address_family = socket.AF_INET6


class Dashboard:
    """A running dashboard: ``url``; ``close()`` stops it (and removes ``token_file``, a driver's token)."""

    token_file: str | None = None

    def __init__(self, source, token: bytes, host: str, port: int, derive=None, tls=None):
        """``tls``: the node's ``cluster.tls.TLSFiles`` on a TLS cluster: the dashboard serves https with them."""
        context = https_context(tls) if tls is not None else None
        try:
            self._server = (_Server6 if ":" in host else _Server)((host, port), _Handler)
        except OSError as exc:
            raise OSError(exc.errno, f"the dashboard cannot listen on {host}:{port}: {exc.strerror}; pick another "
                                     f"port (--dashboard-port, or init(dashboard_port=...))") from None
        self._server.tls_context = context
        self._server.gate = Gatekeeper(token, derive)
        self._server.source = source
        self._server.metrics = None  # () -> (body, content type): /metrics, as the node's own endpoint serves it
        self._server.routers = []  # add_routes' and add_route's, asked before the built-in routes
        self.host = host
        self.port = self._server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if context is not None else 'http'}://{shown}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="anyray-dashboard", daemon=True)
        if source is not None:
            self.serve(source)

    def add_route(self, method: str, prefix: str, answer) -> None:
        """Answer ``method`` requests to ``prefix`` and the paths under it (``prefix + "/..."``) with
        ``answer(handler, path)``, for visitors who logged in; before the built-in routes (a route may take
        one of them over). ``handler`` answers with ``send_json(status, value)`` or ``send_body(status, bytes,
        content_type)`` and reads a JSON body with ``read_json()``."""
        if method not in ("GET", "POST", "DELETE", "PUT") or not prefix.startswith("/"):
            raise ValueError(f"add_route: a method GET, POST, DELETE or PUT and a path from '/', got {method!r} "
                             f"{prefix!r}")
        self.add_routes(_Route(method, prefix, answer))

    def add_routes(self, router) -> None:
        """Answer more paths behind the login: ``router.claims(method, path)`` says which,
        ``router.handle(handler, method, path, query)`` answers them, and ``router.close()`` runs when the
        dashboard closes (the head's jobs stop with it)."""
        self._server.routers.append(router)

    def serve_metrics(self, node) -> None:
        """Serve ``node``'s Prometheus metrics at ``/metrics`` too (without a login, as the node's own port)."""
        from ..metrics import exposition

        self._server.metrics = lambda: exposition(node)

    def serve(self, source) -> None:
        """Start answering, from ``source`` (the port is held from ``__init__`` on: a caller can learn that it
        is free before it sets the source up)."""
        self._server.source = source
        self._thread.start()

    def __repr__(self) -> str:
        return f"Dashboard({self.url})"

    def close(self) -> None:
        for router in self._server.routers:
            router.close()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()
        if self.token_file is not None:
            try:
                os.unlink(self.token_file)
            except OSError:
                pass
