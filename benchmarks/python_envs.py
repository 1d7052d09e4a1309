"""How long a pip environment takes to build and to reuse, and a worker's start in one.

    python benchmarks/python_envs.py [--package termcolor==2.4.0] [--repeat 5]

Builds the environment for one small package in a fresh temp cache (the first build: a venv, then pip
install from the index), asks for it again (reuse: the published environment found, no pip run), then
starts workers in a WorkerPool: the first worker from the environment's interpreter (its fork server
starts), later ones (forked), and ordinary workers for comparison. Times are medians of --repeat runs
where repeated; the first build and each fork server's start happen once.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from anyray.adapters.node import python_envs
from anyray.adapters.node.pool import WorkerPool
from anyray.adapters.node.session import Session

TIMEOUT = 120


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:10.3f} ms"


def _start(pool: WorkerPool, python: str | None) -> float:
    started = time.perf_counter()
    worker = pool.start_worker(python=python)
    if not worker.wait_ready(TIMEOUT):
        raise SystemExit(f"a worker did not start: {worker.exit}")
    worker.call(int)  # it runs a call, not only connects
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="termcolor==2.4.0", help="the one requirement to install")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="anyray-pyenv-bench-")
    try:
        started = time.perf_counter()
        python = python_envs.ensure_env("pip", [args.package], cache_dir=cache)
        first = time.perf_counter() - started
        reuses = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            assert python_envs.ensure_env("pip", [args.package], cache_dir=cache) == python
            reuses.append(time.perf_counter() - started)
        session = Session()
        pool = WorkerPool(session)
        try:
            pool.wait_server(TIMEOUT)
            ordinary_first = _start(pool, None)
            ordinary = [_start(pool, None) for _ in range(args.repeat)]
            env_first = _start(pool, python)
            in_env = [_start(pool, python) for _ in range(args.repeat)]
        finally:
            pool.close()
            session.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"pip environment for {args.package!r}:")
    print(f"  first build (venv + pip install)       {_ms(first)}")
    print(f"  reuse (median of {args.repeat})                 {_ms(statistics.median(reuses))}")
    print("worker start, to its first call done:")
    print(f"  ordinary worker, first                 {_ms(ordinary_first)}")
    print(f"  ordinary worker (median of {args.repeat})       {_ms(statistics.median(ordinary))}")
    print(f"  env worker, first (its fork server)    {_ms(env_first)}")
    print(f"  env worker (median of {args.repeat})            {_ms(statistics.median(in_env))}")


if __name__ == "__main__":
    main()
