"""Starting and stopping node daemons on this machine (``anyray start``/``stop``, a driver's private cluster)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

from . import files

START_TIMEOUT = 60.0  # seconds a daemon may take to come up (a busy 2-core machine, an etcd election)
# The metadata of a driver's private one-node cluster (``init(backend="cluster")`` without an address): kept in
# its daemon's memory, as Ray's GCS keeps a local cluster's, with no server to start and no client to load.
# ``init(metadata="redis"|"etcd")`` still starts a server (``servers``). Here, not there: a driver starting its
# private cluster loads this module alone (not ``servers`` and its sockets) before the daemon is on its way.
MEMORY = "memory"


class DaemonFailed(RuntimeError):
    pass


def daemon_argv(*, directory: str, head: bool, host: str = "127.0.0.1", port: int = 0, num_cpus=None,
                num_gpus=None, resources: dict | None = None, object_store_memory=None,
                metadata_port: int | None = None, exit_with_parent: bool = False,
                extra: dict | None = None) -> list[str]:
    """The daemon's command line: nothing secret in it (argv is readable by every user of the machine)."""
    argv = [sys.executable, "-m", "anyray.adapters.cluster.boot", "--dir", directory, "--host", host,
            "--port", str(port), "--resources", json.dumps(resources or {})]
    if head:
        argv.append("--head")
    if exit_with_parent:
        argv.append("--exit-with-parent")
    for flag, value in (("--num-cpus", num_cpus), ("--num-gpus", num_gpus),
                        ("--object-store-memory", object_store_memory), ("--metadata-port", metadata_port)):
        if value is not None:
            argv += [flag, str(value)]
    if extra:
        argv += ["--settings", json.dumps(extra)]
    return argv


def secrets_line(token: bytes, *, join: str | None = None, metadata: str | None = None,
                 redis_password: str | None = None) -> bytes:
    """What the daemon reads on its stdin (or ``--secrets-fd``): the token, and the addresses that may hold
    a password (the node to join, the metadata server's URL), and the private Redis's password."""
    return json.dumps({"token": token.decode(), "join": join, "metadata": metadata,
                       "redis_password": redis_password}).encode() + b"\n"


def spawn(*, directory: str, token: bytes, head: bool, address: str | None = None, host: str = "127.0.0.1",
          port: int = 0, num_cpus=None, num_gpus=None, resources: dict | None = None, object_store_memory=None,
          metadata: str | None = None, metadata_port: int | None = None, redis_password: str | None = None,
          extra: dict | None = None, exit_with_parent: bool = False) -> tuple[subprocess.Popen, dict]:
    """Start a node daemon in the background; return its process and its record once it serves.
    (``start`` is the same in two steps: the caller can do other work while the daemon comes up.)

    ``address`` is a node to join; ``metadata`` the metadata server's URL, or "redis"/"etcd" for the kind of
    private server a head starts; ``extra`` the daemon's further settings (``--settings``). Its output goes to
    ``<directory>/logs/node-<pid>.log``; the token, the addresses and passwords reach it through a pipe,
    never argv. With ``exit_with_parent`` that pipe stays open, and the daemon stops when it closes (this
    process ended)."""
    return start(directory=directory, token=token, head=head, address=address, host=host, port=port,
                 num_cpus=num_cpus, num_gpus=num_gpus, resources=resources, object_store_memory=object_store_memory,
                 metadata=metadata, metadata_port=metadata_port, redis_password=redis_password, extra=extra,
                 exit_with_parent=exit_with_parent).wait()


def start(*, directory: str, token: bytes, head: bool, address: str | None = None, host: str = "127.0.0.1",
          port: int = 0, num_cpus=None, num_gpus=None, resources: dict | None = None, object_store_memory=None,
          metadata: str | None = None, metadata_port: int | None = None, redis_password: str | None = None,
          extra: dict | None = None, exit_with_parent: bool = False) -> Starting:
    """Start a node daemon (``spawn``'s arguments) and return at once; ``Starting.wait()`` waits for it."""
    logs = os.path.join(directory, "logs")
    os.makedirs(logs, mode=0o700, exist_ok=True)
    argv = daemon_argv(directory=directory, head=head, host=host, port=port, num_cpus=num_cpus, num_gpus=num_gpus,
                       resources=resources, object_store_memory=object_store_memory, metadata_port=metadata_port,
                       exit_with_parent=exit_with_parent, extra=extra)
    log_path = os.path.join(logs, f"node-{time.time_ns()}.log")
    ready, ready_w = os.pipe()  # the daemon writes to it once it serves, so this waits without polling
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([*argv, "--ready-fd", str(ready_w)], stdin=subprocess.PIPE, stdout=log,
                                    stderr=log, start_new_session=True, close_fds=True, pass_fds=(ready_w,))
    except BaseException:
        os.close(ready)
        raise
    finally:
        os.close(ready_w)
    final_log = os.path.join(logs, f"node-{proc.pid}.log")
    try:
        os.replace(log_path, final_log)
    except OSError:
        final_log = log_path
    try:
        proc.stdin.write(secrets_line(token, join=address, metadata=metadata, redis_password=redis_password))
        proc.stdin.flush()
        if not exit_with_parent:
            proc.stdin.close()
    except OSError:
        pass
    return Starting(proc, ready, directory, final_log)


class Starting:
    """A node daemon on its way up (``start``): ``wait()`` returns its process and its record once it serves,
    or raises ``DaemonFailed`` (it exited, or did not come up in ``START_TIMEOUT``); ``stop()`` gives up on it."""

    def __init__(self, proc: subprocess.Popen, ready: int, directory: str, log: str):
        self.proc, self._ready, self._directory, self.log = proc, ready, directory, log

    def _close(self) -> None:
        if self._ready is not None:
            os.close(self._ready)
            self._ready = None

    def wait(self) -> tuple[subprocess.Popen, dict]:
        try:
            record = _wait_ready(self.proc, self._ready, self._directory, self.log)
        finally:
            self._close()
        if record is not None:
            return self.proc, record
        stop_pid(self.proc.pid)
        raise DaemonFailed(f"The node daemon did not come up within {START_TIMEOUT:.0f} s:\n{_tail(self.log)}")

    def stop(self) -> None:
        self._close()
        stop_pid(self.proc.pid)
        self.proc.wait()




def _wait_ready(proc: subprocess.Popen, ready: int, directory: str, log: str) -> dict | None:
    """The daemon's record once it serves (its pipe said so, or closed); None past ``START_TIMEOUT``."""
    deadline = time.monotonic() + START_TIMEOUT
    said = False
    while time.monotonic() < deadline:
        if not said:
            said = bool(select.select([ready], [], [], min(0.5, max(deadline - time.monotonic(), 0)))[0])
        else:
            time.sleep(0.02)  # the pipe closed without a word: the daemon failed, or its record comes late
        for record in files.local_nodes(directory):
            if record.get("pid") == proc.pid:
                record["log"] = log
                return record
        if proc.poll() is not None:
            raise DaemonFailed(f"The node daemon exited with code {proc.returncode} before it served"
                               f"{_reason(log)}\n{_tail(log)}")
    return None


def _reason(path: str) -> str:
    """The daemon's own account of why it could not start, if its log has one."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "could not start:" in line:
                    return ": " + line.split("could not start:", 1)[1].strip()
    except OSError:
        pass
    return ""


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_pid(pid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the daemon ``pid`` and wait for it to go; SIGKILL it past ``timeout``. True if it was running."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return True
        time.sleep(0.02)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def _running(pid: int) -> bool:
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)  # our child: reap it
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that is not our child counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def kill_tree(pid: int) -> None:
    """SIGKILL the daemon ``pid`` and every process it started (``anyray stop --force``)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    _running(pid)  # reaps it when it is our child
