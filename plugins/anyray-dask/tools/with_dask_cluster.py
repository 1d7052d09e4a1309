"""Run a command against a Dask cluster of its own: ``dask scheduler`` and N ``dask worker`` processes.

The cluster stands for one a user already runs (Kubernetes, an HPC queue, a
cloud), which ``init(backend="dask", address=...)`` connects to. Everything
listens on 127.0.0.1, on free ports; the processes are stopped by process
id (their process group) when the command ends, whatever its outcome.

    python plugins/anyray-dask/tools/with_dask_cluster.py --workers 2 -- \\
        pytest conformance_tests --backend dask --backend-option address=@ADDRESS@

``@ADDRESS@`` in the command becomes the scheduler's address, which is also
in ``$ANYRAY_DASK_ADDRESS``. The first worker has the custom resource
``Custom=2``, as the conformance suite's session asks; each has ``--threads``
threads.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(workers: int, threads: int) -> tuple[str, list[subprocess.Popen]]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    # One task per thread on each worker (Dask's default sends one more, which then waits there).
    env = dict(os.environ, DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0",
               DASK_LOGGING__DISTRIBUTED="warning")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env, start_new_session=True)]
    for i in range(workers):
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", str(threads),
               "--host", "127.0.0.1", "--no-dashboard", "--name", f"worker-{i}", "--death-timeout", "30"]
        if i == 0:
            cmd += ["--resources", "Custom=2"]
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
    return address, procs


def wait_ready(address: str, workers: int, timeout: float = 60) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with Client(address, timeout="5s") as client:
                client.wait_for_workers(workers, timeout=max(deadline - time.monotonic(), 1))
                return
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # workers first, then the scheduler
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    address, procs = start(args.workers, args.threads)
    try:
        wait_ready(address, args.workers)
        env = dict(os.environ, ANYRAY_DASK_ADDRESS=address)
        return subprocess.call([part.replace("@ADDRESS@", address) for part in command], env=env)
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
