"""How a node daemon starts: its metadata server first, its fork server forked from it before it loads the node's
side, its readiness said on a pipe; and what a process that imports anyray does not load."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time

import psutil
import pytest

import anyray
from anyray.adapters.cluster import launch

WAIT = 60.0  # generous: a busy 2-core machine
NODE_SIDE = ["anyray.adapters.node.pool", "anyray.adapters.node.scheduler", "anyray.adapters.node.node",
             "concurrent.futures"]


def _gone(predicate, timeout: float = WAIT) -> list[psutil.Process]:
    """The processes ``predicate`` still picks after ``timeout`` (none, once they have all exited)."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for proc in psutil.process_iter():
            try:
                if predicate(proc):
                    left.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_a_node_forks_its_fork_server_from_itself_and_workers_hold_none_of_the_node_side():
    anyray.init(backend="cluster", num_cpus=1)
    try:
        backend = anyray.runtime.current_runtime().backend
        daemon = psutil.Process(backend._proc.pid)
        probe = anyray.remote(lambda names: (os.getpid(), [n for n in names if n in sys.modules]))
        worker_pid, loaded = anyray.get(probe.remote([*NODE_SIDE, "redis"]), timeout=WAIT)
        worker = psutil.Process(worker_pid)
        server = worker.parent()
        # forked by the daemon, not started as a new interpreter: the daemon's command line, the daemon's parent
        assert server.ppid() == daemon.pid
        assert server.cmdline() == daemon.cmdline()
        assert server.num_threads() == 1  # a fork server stays single-threaded
        assert loaded == []  # forked before the daemon loaded the node's side (and its metadata client)
        assert anyray.get(anyray.remote(lambda x: x + 1).remote(1), timeout=WAIT) == 2
    finally:
        anyray.shutdown()
    assert _gone(lambda p: p.pid in (daemon.pid, server.pid, worker_pid)) == []


def test_a_daemon_that_cannot_start_leaves_neither_its_fork_server_nor_its_metadata_server(tmp_path):
    directory = str(tmp_path / "cluster")
    os.makedirs(directory, mode=0o700)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(launch.DaemonFailed, match="another process uses it"):
            launch.spawn(directory=directory, token=secrets.token_hex(16).encode(), head=True, port=port,
                         num_cpus=1)
    # its Redis ran in the cluster directory (its working directory); its fork server has its command line
    assert _gone(lambda p: p.cwd() == directory or directory in " ".join(p.cmdline())) == []


def test_the_daemon_says_it_serves_on_its_ready_pipe(tmp_path):
    directory = str(tmp_path / "cluster")
    os.makedirs(directory, mode=0o700)
    starting = launch.start(directory=directory, token=secrets.token_hex(16).encode(), head=True, num_cpus=1)
    try:
        proc, record = starting.wait()
        assert record["pid"] == proc.pid and record["head"]
        with open(record["file"]) as f:
            assert json.load(f)["address"] == record["address"]  # on disk before the pipe said so
    finally:
        starting.stop()
    assert proc.poll() is not None


def test_importing_anyray_loads_no_module_only_rare_calls_need():
    rare = ["zipfile", "difflib", "venv", "sysconfig", "redis", "ssl"]  # ssl: only with TLS on
    code = (f"import sys, anyray, anyray.adapters.node.forkserver, anyray.adapters.cluster.daemon\n"
            f"print([n for n in {rare!r} if n in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _metadata_servers(daemon: psutil.Process) -> list[str]:
    return [" ".join(p.cmdline()) for p in daemon.children(recursive=True)
            if any(name in " ".join(p.cmdline()) for name in ("redis-server", "etcd"))]


def test_a_private_cluster_keeps_its_metadata_in_its_daemon_unless_a_server_is_asked_for(tmp_path):
    anyray.init(backend="cluster", num_cpus=1)
    try:
        daemon = psutil.Process(anyray.runtime.current_runtime().backend._proc.pid)
        assert _metadata_servers(daemon) == []  # no server process: the head keeps it, as Ray's GCS does
        actor = anyray.remote(type("Named", (), {"ping": lambda self: "pong"})).options(name="kept").remote()
        assert anyray.get(anyray.get_actor("kept").ping.remote(), timeout=WAIT) == "pong"  # names are metadata
        assert len(anyray.nodes()) == 1
        del actor
        backend = anyray.runtime.current_runtime().backend
        joiner = tmp_path / "joiner"
        joiner.mkdir(mode=0o700)
        with pytest.raises(launch.DaemonFailed, match="private one-node cluster .* no node can join it"):
            launch.spawn(directory=str(joiner), token=backend._token, head=False, address=backend.address,
                         num_cpus=1)
    finally:
        anyray.shutdown()
    anyray.init(backend="cluster", num_cpus=1, metadata="redis")
    try:
        daemon = psutil.Process(anyray.runtime.current_runtime().backend._proc.pid)
        assert len(_metadata_servers(daemon)) == 1
        assert anyray.get(anyray.remote(lambda: 1).remote(), timeout=WAIT) == 1
    finally:
        anyray.shutdown()


def test_the_cluster_backend_loads_its_driver_side_only_once_its_private_daemon_is_on_its_way():
    code = ("import sys, anyray, anyray.adapters.cluster\n"
            "heavy = ['anyray.adapters.node.link', 'anyray.adapters.node.messages', 'anyray.adapters.cluster.direct',\n"
            "         'anyray.adapters.cluster.driver_side']\n"
            "print([n for n in heavy if n in sys.modules])\n"
            "anyray.init(backend='cluster', num_cpus=1)\n"
            "print(anyray.get(anyray.remote(lambda: 41).remote() ) + 1)\n"
            "anyray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[]", "42"]


def test_a_driver_starts_its_private_daemon_before_it_loads_sockets_or_the_metadata_servers():
    code = ("import sys, anyray\n"
            "from anyray.adapters.cluster import launch\n"
            "real, seen = launch.start, []\n"
            "def start(**kw):\n"
            "    seen.append([n for n in ('anyray.adapters.cluster.servers', 'socket') if n in sys.modules])\n"
            "    return real(**kw)\n"
            "launch.start = start\n"
            "anyray.init(backend='cluster', num_cpus=1)\n"
            "print(seen, anyray.get(anyray.remote(lambda: 41).remote()) + 1)\n"
            "anyray.shutdown()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[]] 42"
