"""The job API on a head's dashboard, at Ray's REST paths, behind the cluster token like the rest of ``/api/``.

``POST /api/jobs/`` (submit: Ray's ``JobSubmitRequest`` fields, answers ``{"submission_id", "job_id"}``),
``GET /api/jobs/`` (the list), ``GET /api/jobs/<id>`` (Ray's ``JobDetails``), ``GET /api/jobs/<id>/logs``
(``{"logs"}``; with ``?offset=N`` what follows byte N, the new offset and whether the job ended: how
``logs --follow`` and anyray's ``tail_job_logs`` read), ``GET /api/jobs/<id>/logs/tail`` (Ray's websocket of the
log, for Ray's own client and ``ray job submit``),
``POST /api/jobs/<id>/stop`` (``{"stopped"}``), ``DELETE /api/jobs/<id>`` (``{"deleted"}``),
``GET|PUT /api/packages/gcs/<name>.zip`` (a working_dir the client uploads) and ``GET /api/version``.
``GET /api/jobs`` without the trailing slash stays the page's list of the cluster's drivers (``sources.KINDS``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.parse

from .jobs import JobError, JobManager
from .jobs_records import JobRecords

API_VERSION = "4"  # what Ray's dashboard answers at /api/version
RAY_VERSION = "2.60.0"  # the Ray release whose job API this follows (Ray's client checks it is >= 2.8)
MAX_BODY = 1 << 20  # a job request is small; a package goes by PUT


class JobRoutes:
    def __init__(self, manager: JobManager, session_name: str = ""):
        self.manager = manager
        self.session_name = session_name

    @classmethod
    def for_head(cls, daemon) -> JobRoutes:
        session = daemon.node.session.path
        records = JobRecords(daemon.metadata, daemon.token) if getattr(daemon, "metadata", None) else None
        manager = JobManager(os.path.join(session, "jobs"), daemon.address, daemon.node.node_id,
                             getattr(daemon, "directory", None), records, lambda submission_id: _driver_of(
                                 daemon, submission_id))
        return cls(manager, os.path.basename(session))

    def claims(self, method: str, path: str) -> bool:
        if path == "/api/version":
            return method == "GET"
        if path.startswith("/api/packages/"):
            return method in ("GET", "PUT")
        if path == "/api/jobs":  # the page's rows: GET; a submission without the slash: POST
            return method == "POST"
        return path.startswith("/api/jobs/")

    def handle(self, request, method: str, path: str, query: str) -> None:
        if method == "GET" and path.endswith("/logs/tail"):
            return self._tail(request, path)
        try:
            status, answer = self._answer(request, method, path, query)
        except JobError as exc:
            status, answer = exc.status, {"error": str(exc)}
            if method in ("POST", "PUT"):
                request.close_connection = True  # a body may be left unread
        request.send_json(status, answer)

    def _answer(self, request, method: str, path: str, query: str):
        jobs = self.manager
        if path == "/api/version":
            return 200, {"version": API_VERSION, "ray_version": RAY_VERSION, "ray_commit": "anyray",
                         "session_name": self.session_name}
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")][1:]  # after "api"
        if parts[0] == "packages":
            if len(parts) != 3:
                raise JobError(404, "a package is at /api/packages/<protocol>/<name>")
            if method == "GET":
                found = jobs.has_package(parts[1], parts[2])
                return (200, {"exists": True}) if found else (404, {"error": f"no package {parts[2]}"})
            length = _length(request)
            jobs.put_package(parts[1], parts[2], request.rfile.read, length)
            return 200, {"uploaded": parts[2]}
        rest = parts[1:]
        if not rest or rest == [""]:
            if method == "POST":
                return 200, jobs.submit(_body(request))
            if method == "GET":
                return 200, jobs.list()
        elif len(rest) == 1:
            if method == "GET":
                return 200, jobs.details(rest[0])
            if method == "DELETE":
                return 200, {"deleted": jobs.delete(rest[0])}
        elif len(rest) == 2 and rest[1] == "logs" and method == "GET":
            offset = urllib.parse.parse_qs(query).get("offset")
            if offset is not None:
                try:
                    offset = int(offset[0])
                    if offset < 0:
                        raise ValueError
                except ValueError:
                    raise JobError(400, f"offset is a byte count >= 0, got {offset[0]!r}") from None
            return 200, jobs.logs(rest[0], offset)
        elif len(rest) == 2 and rest[1] == "stop" and method == "POST":
            return 200, {"stopped": jobs.stop(rest[0])}
        raise JobError(404, f"no {method} at {path}: the job API has POST /api/jobs/, GET /api/jobs/, "
                            f"GET|DELETE /api/jobs/<id>, GET /api/jobs/<id>/logs, POST /api/jobs/<id>/stop")

    def close(self) -> None:
        self.manager.close()

    def _tail(self, request, path: str) -> None:
        """``GET /api/jobs/<id>/logs/tail``, a websocket as Ray's: the log in text messages as the job prints it,
        then a normal close once it ended (what Ray's ``tail_job_logs`` and ``ray job submit`` read)."""
        submission_id = urllib.parse.unquote(path[len("/api/jobs/"):-len("/logs/tail")])
        key = request.headers.get("Sec-WebSocket-Key")
        try:
            self.manager.details(submission_id)
            if request.headers.get("Upgrade", "").lower() != "websocket" or not key:
                raise JobError(400, "logs/tail is a websocket; read /api/jobs/<id>/logs?offset=N without one")
        except JobError as exc:
            return request.send_json(exc.status, {"error": str(exc)})
        accept = base64.b64encode(hashlib.sha1(key.strip().encode() + _WS_GUID).digest()).decode()
        request.send_response(101)
        for name, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)):
            request.send_header(name, value)
        request.end_headers()
        request.close_connection = True
        offset = 0
        try:
            while True:
                got = self.manager.logs(submission_id, offset)
                offset = got["offset"]
                if got["logs"]:
                    request.wfile.write(_frame(0x1, got["logs"].encode()))
                elif got["ended"]:
                    break
                else:
                    time.sleep(0.25)
            request.wfile.write(_frame(0x8, (1000).to_bytes(2, "big")))  # close: normal
        except (OSError, JobError):  # the client went, or the job was deleted
            pass


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked websocket frame from the server (RFC 6455)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, size])
    elif size < 1 << 16:
        head = bytes([0x80 | opcode, 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + size.to_bytes(8, "big")
    return head + payload


def _length(request) -> int:
    try:
        return int(request.headers.get("Content-Length") or 0)
    except ValueError:
        request.close_connection = True
        raise JobError(400, "Content-Length is not a number") from None


def _body(request):
    length = _length(request)
    if not 0 < length <= MAX_BODY:
        request.close_connection = True
        raise JobError(400 if length <= 0 else 413, f"a job request is a JSON body of 1 byte to {MAX_BODY} bytes")
    try:
        return json.loads(request.rfile.read(length))
    except ValueError as exc:
        raise JobError(400, f"the body is not JSON: {exc}") from None


def _driver_of(daemon, submission_id: str):
    """The driver (a row of the daemon's driver table) that a submitted job's entrypoint started, or None."""
    drivers = getattr(daemon, "drivers", None)
    return drivers.of_submission(submission_id) if drivers is not None else None
