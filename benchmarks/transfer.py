"""Object transfer between two node daemons on this machine, without and with TLS.

    python benchmarks/transfer.py [--mb 100] [--reps 5] [--json]

For each mode it starts a head and a second node (``anyray start``, TLS with ``--tls``) in a private
cluster directory, puts an array of ``--mb`` MB on the head and times a task on the other node that
reads it (the pull over the object server's connection: TLS in the second mode), and stops both
nodes. Prints the median and the best of ``--reps`` in GB/s (the task's own cost included).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

ANYRAY = [sys.executable, "-m", "anyray.cli"]

DRIVER = textwrap.dedent("""
    import json, statistics, sys, time
    import numpy as np
    import anyray as ray

    mb, reps = int(sys.argv[1]), int(sys.argv[2])
    ray.init(address="auto")

    @ray.remote(resources={"node2": 1})
    def read(box):
        return float(ray.get(box[0])[-1])  # the whole array is here before the read

    n = mb * 2**20 // 8
    ray.get(read.remote([ray.put(np.ones(10))]))  # warm: the worker there, the connections
    there = []
    for _ in range(1 + reps):
        ref = ray.put(np.random.default_rng(0).random(n))
        t = time.perf_counter()
        ray.get(read.remote([ref]))
        there.append(time.perf_counter() - t)
        del ref
    nbytes = n * 8
    print(json.dumps({"there": nbytes / statistics.median(there[1:]) / 1e9, "best": nbytes / min(there[1:]) / 1e9}))
""")


def cli(env: dict, *args: str) -> str:
    result = subprocess.run([*ANYRAY, *args], env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"anyray {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def measure(tls: bool, mb: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="anyray-transfer-") as directory:
        env = dict(os.environ, ANYRAY_CLUSTER_DIR=directory)
        for name in [n for n in env if n.startswith(("ANYRAY_TLS_", "RAY_TLS_", "RAY_USE_TLS"))]:
            del env[name]
        head = ["start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus", "1"]
        try:
            out = cli(env, *head, *(["--tls"] if tls else []))
            address = out.split("serving at ", 1)[1].split()[0]
            cli(env, "start", "--address", address, "--num-cpus", "1", "--resources", '{"node2": 1}')
            result = subprocess.run([sys.executable, "-c", DRIVER, str(mb), str(reps)], env=env,
                                    capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"the driver failed:\n{result.stderr}")
            return json.loads(result.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run([*ANYRAY, "stop"], env=env, capture_output=True, timeout=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results = {mode: measure(mode == "tls", args.mb, args.reps) for mode in ("plain", "tls")}
    if args.json:
        print(json.dumps(results))
        return 0
    for mode, r in results.items():
        print(f"{args.mb} MB between two nodes, {mode:5}: {r['there']:.2f} GB/s (median), {r['best']:.2f} GB/s "
              f"(best)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
