"""``ray.job_submission``: submit a shell command as a job to a cluster head, and watch, stop and list jobs.

``JobSubmissionClient(address)`` talks to the head's dashboard (default ``http://127.0.0.1:8265``, as Ray; else
``$RAY_ADDRESS``/``$ANYRAY_ADDRESS`` when an http(s) URL, else the dashboard of the head on this machine) with
Ray's REST paths. The cluster token goes in an ``Authorization: Bearer`` header: the one in ``headers`` if given,
else ``token_file``'s, else ``$ANYRAY_CLUSTER_TOKEN``, else this machine's token file (``anyray start`` wrote it),
as ``anyray status`` finds it. A local ``runtime_env["working_dir"]`` is zipped (as task runtime_envs are) and
uploaded first; the job runs in it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from enum import Enum

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class JobStatus(str, Enum):
    """A job's state, as Ray's."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def __str__(self) -> str:
        return self.value

    def is_terminal(self) -> bool:
        return self.value in ("STOPPED", "SUCCEEDED", "FAILED")


class JobType(str, Enum):
    SUBMISSION = "SUBMISSION"
    DRIVER = "DRIVER"


@dataclasses.dataclass
class DriverInfo:
    """The driver of a job (Ray's ``DriverInfo``): its job id, node address and process id."""

    id: str
    node_ip_address: str
    pid: str


@dataclasses.dataclass
class JobDetails:
    """What ``get_job_info`` and ``list_jobs`` answer (Ray's ``JobDetails`` fields)."""

    type: JobType
    entrypoint: str
    status: JobStatus
    job_id: str | None = None
    submission_id: str | None = None
    driver_info: DriverInfo | None = None
    message: str | None = None
    error_type: str | None = None
    start_time: int | None = None
    end_time: int | None = None
    metadata: dict | None = None
    runtime_env: dict | None = None
    driver_agent_http_address: str | None = None
    driver_node_id: str | None = None
    driver_exit_code: int | None = None
    entrypoint_num_cpus: float | None = None
    entrypoint_num_gpus: float | None = None
    entrypoint_memory: int | None = None
    entrypoint_resources: dict | None = None

    @classmethod
    def from_json(cls, value: dict) -> JobDetails:
        known = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in value.items() if k in known}
        kept["status"] = JobStatus(kept["status"])
        kept["type"] = JobType(kept.get("type") or "SUBMISSION")
        if isinstance(kept.get("driver_info"), dict):
            kept["driver_info"] = DriverInfo(**{k: kept["driver_info"].get(k) for k in ("id", "node_ip_address",
                                                                                        "pid")})
        return cls(**kept)


JobInfo = JobDetails  # Ray's older name for the same record


def dashboard_address(address: str | None = None) -> str:
    """The dashboard URL a client or ``anyray job`` talks to: ``address`` (``http(s)://...``, or ``auto`` or
    ``HOST:PORT`` of a head on this machine), else an http(s) ``$RAY_ADDRESS``/``$ANYRAY_ADDRESS``, else the
    dashboard of the head on this machine, else Ray's default ``http://127.0.0.1:8265``."""
    if address is None:
        for name in ("RAY_ADDRESS", "ANYRAY_ADDRESS"):
            value = os.environ.get(name, "")
            if value.startswith(("http://", "https://")):
                return value.rstrip("/")
    if address and address.startswith(("http://", "https://")):
        return address.rstrip("/")
    from anyray.adapters.cluster import files

    heads = [r for r in files.local_nodes() if r.get("head")]
    for record in heads:
        if address in (None, "auto", record.get("address")) and record.get("dashboard_url"):
            return record["dashboard_url"]
    if address in (None, "auto"):
        return DEFAULT_ADDRESS
    raise ValueError(f"{address!r} is not a dashboard address: give the head's dashboard as http://HOST:PORT "
                     f"(what `anyray start --head` printed after 'Dashboard:'; {DEFAULT_ADDRESS} by default).")


def _token_header(token_file: str | None) -> dict:
    from anyray.adapters.cluster.files import read_token

    try:
        token = read_token(token_file)
    except FileNotFoundError:
        if token_file is not None:
            raise
        return {}  # the head will say 401, and what to do
    return {"Authorization": "Bearer " + token.decode().strip()}


class JobSubmissionClient:
    """Ray's ``JobSubmissionClient``, against an anyray head's dashboard."""

    def __init__(self, address: str | None = None, create_cluster_if_needed: bool = False, cookies=None,
                 metadata: dict | None = None, headers: dict | None = None, verify=True,
                 token_file: str | None = None, timeout: float = 60.0):
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be a string, got {type(address).__name__}")
        for name, value in (("cookies", cookies), ("metadata", metadata), ("headers", headers)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict, got {type(value).__name__}")
        self._address = dashboard_address(address)
        self._headers = dict(headers or {})
        if not any(k.lower() == "authorization" for k in self._headers):
            self._headers.update(_token_header(token_file))
        if cookies:
            self._headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
        self._default_metadata = dict(metadata or {})
        self._ssl = _ssl_context(verify) if self._address.startswith("https://") else None
        self._timeout = timeout
        self.get_version()  # as Ray's: a client that cannot reach the head fails here, saying so

    def __repr__(self) -> str:
        return f"JobSubmissionClient({self._address!r})"

    # -- HTTP ------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body=None, data: bytes | None = None, missing_ok=False):
        headers = {**self._headers, "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self._address + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._ssl) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                said = json.loads(exc.read()).get("error")
            except (ValueError, AttributeError):
                said = exc.reason
            if exc.code == 401:
                raise PermissionError(f"The dashboard at {self._address} refused this client: {said}. Run on the "
                                      f"head's machine, pass token_file= (or --token-file), or set "
                                      f"$ANYRAY_CLUSTER_TOKEN.") from None
            if exc.code == 404 and missing_ok:
                return None
            raise RuntimeError(f"Request failed with status code {exc.code}: {said}") from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"Failed to connect to the dashboard at {self._address} ({exc.reason}): is a "
                                  f"head running? (`anyray start --head` serves it on port 8265)") from None

    def get_version(self) -> str:
        return self._request("GET", "/api/version")["version"]

    # -- working_dir -----------------------------------------------------------------------------
    def _upload_working_dir(self, runtime_env: dict) -> dict:
        working_dir = runtime_env.get("working_dir")
        if runtime_env.get("py_modules"):
            raise ValueError("runtime_env py_modules is not supported by job submission here; put the modules in "
                             "the working_dir (it is on the job's sys.path as its cwd).")
        if not working_dir or "://" in working_dir:
            return runtime_env
        from anyray.runtime_env_setup import _zip_bytes

        path = os.path.abspath(os.path.expanduser(working_dir))
        if not os.path.isdir(path):
            raise ValueError(f"runtime_env working_dir {working_dir!r} is not a folder on this machine.")
        data = _zip_bytes(path, tuple(runtime_env.get("excludes") or ()), keep_name=False)
        name = f"_ray_pkg_{hashlib.sha256(data).hexdigest()[:32]}.zip"
        if self._request("GET", f"/api/packages/gcs/{name}", missing_ok=True) is None:
            self._request("PUT", f"/api/packages/gcs/{name}", data=data)
        return {**runtime_env, "working_dir": f"gcs://{name}"}

    # -- jobs ------------------------------------------------------------------------------------
    def submit_job(self, *, entrypoint: str, job_id: str | None = None, runtime_env: dict | None = None,
                   metadata: dict | None = None, submission_id: str | None = None,
                   entrypoint_num_cpus: float | None = None, entrypoint_num_gpus: float | None = None,
                   entrypoint_memory: int | None = None, entrypoint_resources: dict | None = None,
                   entrypoint_label_selector: dict | None = None) -> str:
        """Start ``entrypoint`` (a shell command) as a driver on the head; its submission id."""
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise ValueError("entrypoint must be a non-empty shell command, e.g. 'python script.py'")
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise TypeError(f"runtime_env must be a dict, got {type(runtime_env).__name__}")
        runtime_env = self._upload_working_dir(dict(runtime_env or {}))
        body = {"entrypoint": entrypoint, "submission_id": submission_id or job_id, "runtime_env": runtime_env,
                "metadata": {**(metadata or {}), **self._default_metadata},
                "entrypoint_num_cpus": entrypoint_num_cpus, "entrypoint_num_gpus": entrypoint_num_gpus,
                "entrypoint_memory": entrypoint_memory, "entrypoint_resources": entrypoint_resources,
                "entrypoint_label_selector": entrypoint_label_selector}
        return self._request("POST", "/api/jobs/", {k: v for k, v in body.items() if v is not None})["submission_id"]

    def stop_job(self, job_id: str) -> bool:
        """Stop the job (SIGTERM, then SIGKILL to all its processes); False if it had already ended."""
        return self._request("POST", f"/api/jobs/{_quoted(job_id)}/stop")["stopped"]

    def delete_job(self, job_id: str) -> bool:
        """Forget an ended job and its log."""
        return self._request("DELETE", f"/api/jobs/{_quoted(job_id)}")["deleted"]

    def get_job_info(self, job_id: str) -> JobDetails:
        return JobDetails.from_json(self._request("GET", f"/api/jobs/{_quoted(job_id)}"))

    def list_jobs(self) -> list[JobDetails]:
        return [JobDetails.from_json(row) for row in self._request("GET", "/api/jobs/")]

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def get_job_logs(self, job_id: str) -> str:
        return self._request("GET", f"/api/jobs/{_quoted(job_id)}/logs")["logs"]

    def read_job_logs(self, job_id: str, offset: int = 0) -> dict:
        """What the job printed after byte ``offset``: ``{"logs", "offset", "ended", "status"}``."""
        return self._request("GET", f"/api/jobs/{_quoted(job_id)}/logs?offset={int(offset)}")

    async def tail_job_logs(self, job_id: str, poll_s: float = 0.25):
        """An async iterator of what the job prints, as it prints it, ending when the job ends."""
        offset = 0
        while True:
            got = await asyncio.to_thread(self.read_job_logs, job_id, offset)
            offset = got["offset"]
            if got["logs"]:
                yield got["logs"]
            elif got["ended"]:
                return
            else:
                await asyncio.sleep(poll_s)


def _ssl_context(verify):
    """``verify`` as Ray's: True (the system's CAs), False (no check), or the path of a CA bundle."""
    import ssl

    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    if verify is True:
        return ssl.create_default_context()
    raise TypeError(f"verify must be a bool or the path of a CA bundle, got {type(verify).__name__}")


def _quoted(job_id: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"a job is named by its submission id (a string), got {job_id!r}")
    return urllib.parse.quote(job_id, safe="")


__all__ = ["DriverInfo", "JobDetails", "JobInfo", "JobStatus", "JobSubmissionClient", "JobType", "dashboard_address"]
