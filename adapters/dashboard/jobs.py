"""Jobs a cluster head runs for ``anyray job submit`` and ``JobSubmissionClient`` (Ray's job submission).

Each job's entrypoint is a shell command run as a driver on the head: a child of the head's daemon in its own
session (process group), with ``RAY_ADDRESS``/``ANYRAY_ADDRESS`` naming this cluster so that ``anyray.init()``
inside it joins it, the cluster directory (and so the token file) of the head, and the job's ``runtime_env``
``env_vars``. Its stdout and stderr go to ``<session>/jobs/<submission_id>.log``. A ``working_dir`` is a package
the client uploaded first (``PUT /api/packages/gcs/<name>.zip``, as Ray's client does), unpacked once per content
hash under ``<session>/jobs/packages`` and made the entrypoint's cwd.

States as Ray's: PENDING (setting up), RUNNING, and then SUCCEEDED (exit 0), FAILED, or STOPPED (``stop``:
SIGTERM, or SIGINT where the job's env_vars set ``RAY_JOB_STOP_SIGNAL`` so, to the job's process group, and after
``STOP_WAIT_S`` SIGKILL to it and to every process it started, found with psutil, even one that left the group).
The records live in the head's memory, as long as the head.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import string
import subprocess
import sys
import threading
import time

from anyray.runtime_env_setup import unpacked

TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")
STOP_WAIT_S = float(os.environ.get("RAY_JOB_STOP_WAIT_TIME_S", "3"))  # Ray's, and its variable
PACKAGE_NAME = re.compile(r"^_ray_pkg_[0-9a-zA-Z]{1,64}\.zip$")
SUBMISSION_ID = re.compile(r"^[\w.\-]{1,128}$")
MAX_PACKAGE_BYTES = 512 * 2**20  # Ray's limit on an uploaded package
_FIELDS = ("entrypoint", "submission_id", "job_id", "runtime_env", "metadata", "entrypoint_num_cpus",
           "entrypoint_num_gpus", "entrypoint_memory", "entrypoint_resources", "entrypoint_label_selector")


class JobError(Exception):
    """A request the job API refuses: ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def new_submission_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "raysubmit_" + "".join(secrets.choice(alphabet) for _ in range(16))  # Ray's form


class _Job:
    def __init__(self, request: dict, log_path: str, node_id: str):
        self.request = request
        self.log_path = log_path
        self.node_id = node_id
        self.status = "PENDING"
        self.message = "Job is waiting to start."
        self.error_type = None
        self.start_time = int(time.time() * 1000)
        self.end_time = None
        self.exit_code = None
        self.proc: subprocess.Popen | None = None
        self.stopping = False
        self.done = threading.Event()

    def details(self) -> dict:
        """Ray's ``JobDetails`` fields (``GET /api/jobs/<id>``)."""
        r = self.request
        return {"type": "SUBMISSION", "job_id": None, "submission_id": r["submission_id"], "driver_info": None,
                "status": self.status, "entrypoint": r["entrypoint"], "message": self.message,
                "error_type": self.error_type, "start_time": self.start_time, "end_time": self.end_time,
                "metadata": r.get("metadata") or {}, "runtime_env": r.get("runtime_env") or {},
                "driver_agent_http_address": None, "driver_node_id": self.node_id,
                "driver_exit_code": self.exit_code,
                **{k: r.get(k) for k in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory",
                                         "entrypoint_resources")},
                "pid": self.proc.pid if self.proc is not None else None}


class JobManager:
    """The head's jobs: ``submit``, ``details``, ``list``, ``logs``, ``stop``, ``delete``, and the packages."""

    def __init__(self, root: str, address: str, node_id: str, cluster_dir: str | None = None, records=None,
                 driver_of=None):
        """``records``: a ``JobRecords`` of the cluster's metadata store, or None to keep the jobs in memory;
        ``driver_of(submission_id)``: the driver row (``cluster.drivers``) a job's entrypoint started, or None."""
        self.driver_of = driver_of
        self.root = root
        self.address = address
        self.node_id = node_id
        self.cluster_dir = cluster_dir
        self.packages = os.path.join(root, "packages")
        for folder in (root, self.packages):  # the logs and the uploads: the head's user's only
            os.makedirs(folder, mode=0o700, exist_ok=True)
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._records = records
        self._earlier: dict[str, dict] = records.earlier() if records is not None else {}

    # -- packages (a working_dir the client uploaded) -----------------------------------------
    def _package_path(self, protocol: str, name: str) -> str:
        if protocol != "gcs" or not PACKAGE_NAME.match(name):
            raise JobError(400, f"a package is gcs/_ray_pkg_<hash>.zip, got {protocol}/{name}")
        return os.path.join(self.packages, name)

    def has_package(self, protocol: str, name: str) -> bool:
        return os.path.isfile(self._package_path(protocol, name))

    def put_package(self, protocol: str, name: str, read, length: int) -> None:
        """Store ``length`` bytes read by ``read(n)`` as the package ``name``."""
        path = self._package_path(protocol, name)
        if not 0 < length <= MAX_PACKAGE_BYTES:
            raise JobError(413, f"a package is 1 byte to {MAX_PACKAGE_BYTES // 2**20} MiB, got {length} bytes")
        part = f"{path}.{secrets.token_hex(4)}.part"
        with open(part, "wb") as f:
            left = length
            while left:
                chunk = read(min(left, 1 << 20))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
        if left:
            os.unlink(part)
            raise JobError(400, f"the package {name} ended {left} bytes short")
        os.replace(part, path)

    def _working_dir(self, runtime_env: dict) -> str | None:
        uri = runtime_env.get("working_dir")
        if not uri:
            return None
        if not isinstance(uri, str) or not uri.startswith("gcs://"):
            raise JobError(400, f"runtime_env working_dir {uri!r} is not a package this head holds: the client "
                                f"uploads a local folder first (JobSubmissionClient and `anyray job submit "
                                f"--working-dir` do)")
        name = uri[len("gcs://"):]
        path = self._package_path("gcs", name)
        if not os.path.isfile(path):
            raise JobError(400, f"runtime_env working_dir {uri} was not uploaded to this head")

        def fetch(_uri):
            with open(path, "rb") as f:
                return f.read()
        return unpacked("anyray://" + name, fetch, os.path.join(self.packages, "unpacked"))

    # -- jobs -----------------------------------------------------------------------------------
    def submit(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise JobError(400, "the body of POST /api/jobs/ is a JSON object with an 'entrypoint'")
        unknown = sorted(set(body) - set(_FIELDS))
        if unknown:
            raise JobError(400, f"unknown field(s) {', '.join(unknown)}; a job takes {', '.join(_FIELDS)}")
        entrypoint = body.get("entrypoint")
        if not isinstance(entrypoint, str) or not entrypoint.strip():
            raise JobError(400, "'entrypoint' must be a non-empty shell command, e.g. 'python script.py'")
        runtime_env = body.get("runtime_env") or {}
        metadata = body.get("metadata") or {}
        if not isinstance(runtime_env, dict) or not isinstance(metadata, dict):
            raise JobError(400, "'runtime_env' and 'metadata' must be JSON objects")
        env_vars = runtime_env.get("env_vars") or {}
        if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
            raise JobError(400, "runtime_env env_vars must map names to strings")
        for key in ("entrypoint_num_cpus", "entrypoint_num_gpus", "entrypoint_memory"):
            value = body.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise JobError(400, f"{key} must be a number >= 0, got {value!r}")
        submission_id = body.get("submission_id") or body.get("job_id") or new_submission_id()
        if not isinstance(submission_id, str) or not SUBMISSION_ID.match(submission_id):
            raise JobError(400, f"submission_id {submission_id!r}: use letters, digits, '_', '-' and '.' (1-128)")
        request = {**{k: body.get(k) for k in _FIELDS}, "submission_id": submission_id,
                   "runtime_env": runtime_env, "metadata": metadata}
        cwd = self._working_dir(runtime_env)
        with self._lock:
            if self._closed:
                raise JobError(503, "the head is stopping")
            if submission_id in self._jobs or submission_id in self._earlier:
                raise JobError(400, f"Job with submission_id {submission_id} already exists. Please use a "
                                    f"different submission_id.")
            job = _Job(request, os.path.join(self.root, f"{submission_id}.log"), self.node_id)
            self._jobs[submission_id] = job
        self._save(job)
        threading.Thread(target=self._run, args=(job, cwd, env_vars), name=f"anyray-job-{submission_id}",
                         daemon=True).start()
        return {"submission_id": submission_id, "job_id": None}

    def _environment(self, job: _Job, env_vars: dict, cwd: str | None) -> dict:
        env = dict(os.environ)
        for name in ("ANYRAY_BACKEND", "ANYRAY_CLUSTER_TOKEN"):
            env.pop(name, None)  # the daemon's own settings are not the job's
        env.update(env_vars)
        env["RAY_ADDRESS"] = env["ANYRAY_ADDRESS"] = self.address  # init() inside joins this cluster
        env["RAY_JOB_SUBMISSION_ID"] = env["ANYRAY_JOB_SUBMISSION_ID"] = job.request["submission_id"]
        runtime_env = {k: v for k, v in job.request["runtime_env"].items() if k != "working_dir"}
        if cwd is not None:
            runtime_env["working_dir"] = cwd  # the driver's init() ships it to the job's tasks, as Ray's
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": runtime_env,
                                                         "metadata": job.request["metadata"]})
        if self.cluster_dir:
            env["ANYRAY_CLUSTER_DIR"] = self.cluster_dir  # where init() finds the token file
        # `python` in the entrypoint is the head's interpreter (with anyray), as in Ray's head environment
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        env["PYTHONUNBUFFERED"] = "1"  # its output reaches the log as it prints, as Ray's drivers
        return env

    def _run(self, job: _Job, cwd: str | None, env_vars: dict) -> None:
        try:
            log = open(job.log_path, "ab", buffering=0)
        except OSError as exc:
            return self._end(job, "FAILED", f"cannot open the job's log: {exc}", error_type="JOB_LOG_ERROR")
        try:
            with self._lock:
                if job.stopping:
                    return self._end(job, "STOPPED", "Job was stopped before it started.")
                job.proc = subprocess.Popen(
                    job.request["entrypoint"], shell=True, cwd=cwd, env=self._environment(job, env_vars, cwd),
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                job.status, job.message = "RUNNING", "Job is currently running."
            self._save(job)
        except OSError as exc:
            return self._end(job, "FAILED", f"the entrypoint could not start: {exc}",
                             error_type="JOB_ENTRYPOINT_COMMAND_START_ERROR")
        finally:
            log.close()
        code = job.proc.wait()
        if job.stopping:
            self._kill_rest(job)
            return self._end(job, "STOPPED", "Job was intentionally stopped.", code)
        if code == 0:
            return self._end(job, "SUCCEEDED", "Job finished successfully.", code)
        self._end(job, "FAILED", f"Job entrypoint command failed with exit code {code}, last available logs "
                                 f"(truncated to 20,000 chars):\n{self._tail(job, 20000)}", code,
                  error_type="JOB_ENTRYPOINT_COMMAND_ERROR")

    def _end(self, job: _Job, status: str, message: str, code=None, error_type=None) -> None:
        job.status, job.message, job.exit_code, job.error_type = status, message, code, error_type
        job.end_time = int(time.time() * 1000)
        self._save(job)
        job.done.set()

    def _save(self, job: _Job) -> None:
        if self._records is not None:
            self._records.save(self._details(job))

    def _tail(self, job: _Job, chars: int) -> str:
        try:
            with open(job.log_path, "rb") as f:
                f.seek(max(os.path.getsize(job.log_path) - chars, 0))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _get(self, submission_id: str) -> _Job:
        job = self._jobs.get(submission_id)
        if job is None:
            raise JobError(404, f"Job {submission_id} does not exist")
        return job

    def details(self, submission_id: str) -> dict:
        if submission_id in self._earlier:
            return dict(self._earlier[submission_id])
        return self._details(self._get(submission_id))

    def _details(self, job: _Job) -> dict:
        """``job``'s details, with the job id and driver of the driver its entrypoint started (as Ray fills
        them once the driver connects)."""
        details = job.details()
        driver = self.driver_of(job.request["submission_id"]) if self.driver_of is not None else None
        if driver is not None:
            details["job_id"], details["driver_info"] = driver["job_id"], driver["driver_info"]
        return details

    def list(self) -> list[dict]:
        with self._lock:
            jobs = list(self._jobs.values())
            earlier = [dict(d) for d in self._earlier.values()]
        return earlier + [self._details(job) for job in jobs]

    def logs(self, submission_id: str, offset: int | None = None) -> dict:
        """Ray's ``{"logs": text}``; with ``offset`` (bytes already read), what follows it and the new offset
        (ending at a whole line while the job runs), and whether the job ended, for following the log. A job of
        an earlier head has no log here (it went with that head's session)."""
        if submission_id in self._earlier:
            ended = {"offset": offset, "ended": True, "status": self._earlier[submission_id]["status"]}
            return {"logs": "", **(ended if offset is not None else {})}
        job = self._get(submission_id)
        ended = job.done.is_set()  # read before the log: a line printed just before the end is in it
        try:
            with open(job.log_path, "rb") as f:
                f.seek(offset or 0)
                data = f.read()
        except FileNotFoundError:
            data = b""
        if offset is None:
            return {"logs": data.decode("utf-8", "replace")}
        if not ended:  # up to the last whole line (or \r-ended progress bar): no character is cut in two
            data = data[:max(data.rfind(b"\n"), data.rfind(b"\r")) + 1]
        return {"logs": data.decode("utf-8", "replace"), "offset": offset + len(data), "ended": ended,
                "status": job.status}

    def stop(self, submission_id: str) -> bool:
        """Stop the job; False when it had already ended (Ray's answer)."""
        if submission_id in self._earlier:
            return False
        job = self._get(submission_id)
        with self._lock:
            if job.done.is_set():
                return False
            job.stopping = True
            proc = job.proc
        if proc is not None:
            self._signal(proc.pid, _stop_signal(job.request["runtime_env"].get("env_vars") or {}))
            threading.Thread(target=self._kill_later, args=(job,), daemon=True).start()
        return True

    def _kill_later(self, job: _Job) -> None:
        if not job.done.wait(STOP_WAIT_S):
            self._kill_rest(job)

    def _signal(self, pid: int, sig) -> None:
        try:
            os.killpg(pid, sig)  # the job's session: its shell, the driver and what they started
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_rest(self, job: _Job) -> None:
        """SIGKILL the job's process group and every process it started (those that left the group too)."""
        import psutil

        procs = []
        try:
            procs = psutil.Process(job.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
        procs += [p for p in psutil.process_iter(["environ"]) if _belongs(p, job.request["submission_id"])]
        self._signal(job.proc.pid, signal.SIGKILL)
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=5)

    def delete(self, submission_id: str) -> bool:
        if self._earlier.pop(submission_id, None) is not None:
            if self._records is not None:
                self._records.drop(submission_id)
            return True
        job = self._get(submission_id)
        if not job.done.is_set():
            raise JobError(400, f"Attempted to delete job with submission_id {submission_id}, but it is in a "
                                f"non-terminal state {job.status}: stop it first")
        with self._lock:
            self._jobs.pop(submission_id, None)
        if self._records is not None:
            self._records.drop(submission_id)
        try:
            os.unlink(job.log_path)
        except OSError:
            pass
        return True

    def close(self) -> None:
        """The head stops: every job still running is stopped with it."""
        with self._lock:
            self._closed = True
            running = [sid for sid, job in self._jobs.items() if not job.done.is_set()]
        for sid in running:
            self.stop(sid)
        for sid in running:
            self._jobs[sid].done.wait(STOP_WAIT_S + 5)
        shutil.rmtree(os.path.join(self.packages, "unpacked"), ignore_errors=True)


def _stop_signal(env_vars: dict):
    """The signal ``stop`` sends first: ``RAY_JOB_STOP_SIGNAL`` of the job's env_vars, else the head's (SIGINT or
    SIGTERM, as Ray's), else SIGTERM."""
    name = env_vars.get("RAY_JOB_STOP_SIGNAL") or os.environ.get("RAY_JOB_STOP_SIGNAL", "SIGTERM")
    return signal.SIGINT if name == "SIGINT" else signal.SIGTERM


def _belongs(proc, submission_id: str) -> bool:
    """Whether ``proc`` was started by the job (it inherited the job's submission id), not the head itself."""
    try:
        if proc.pid == os.getpid():
            return False
        environ = proc.info.get("environ") or {}
    except Exception:  # noqa: BLE001 - a process that went, or one of another user
        return False
    return environ.get("ANYRAY_JOB_SUBMISSION_ID") == submission_id


__all__ = ["JobError", "JobManager", "TERMINAL", "new_submission_id"]
