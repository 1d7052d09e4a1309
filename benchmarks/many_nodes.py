"""Many nodes on this machine: 8 node daemons of 1 CPU each, against Ray's ``cluster_utils.Cluster`` with 8 raylets.

    python benchmarks/many_nodes.py [--nodes 8] [--tasks 2000] [--task-ms 10] [--actors 200]
                                    [--engines anyray,ray] [--json out.json]

Each engine runs in a fresh child process (this file, ``--child``), which starts the nodes, connects a driver
to the first, and measures:

- ``tasks``: ``--tasks`` tasks of ``num_cpus=1`` that each *sleep* ``--task-ms`` ms (this machine has 2 cores:
  8 nodes of spinning tasks would measure the cores, not the scheduling), submitted at once, then one ``get``
  of all: tasks/s, and as a share of the ideal (``nodes`` CPUs busy: nodes * 1000 / task_ms tasks/s), and
  how many nodes ran them (fewest and most tasks on one node).
- ``actors``: ``--actors`` actors (``num_cpus=0``, ``scheduling_strategy="SPREAD"``) created, one call each
  answered, then killed: actors/s and how many nodes hold them.
- metadata operations per second per node, in three phases: 3 s idle (heartbeats), the tasks, the actors.
  anyray: its Redis server (started here, so the count is exact) ``INFO commandstats`` before and after each
  phase. Ray: the GCS's own count of the gRPC requests it handled (the event stats
  that the GCS logs in ``gcs_server.out`` every second here with ``RAY_event_stats_print_interval_ms=1000``).

Every process started here is stopped by its pid before the child exits (the child's process group is
killed if it outlives ``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
IDLE_S = 3.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- anyray: 8 daemons on our own Redis ---------------------------------------------------------------

class AnyrayNodes:
    def __init__(self, nodes):
        import redis

        from anyray.adapters.cluster import files, launch

        self.launch = launch
        self.directory = tempfile.mkdtemp(prefix="anyray-many-")
        os.chmod(self.directory, 0o700)
        self.procs = []
        password = secrets.token_hex(8)
        port = free_port()
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--requirepass", password, "--dir", self.directory, "--daemonize", "no", "--notify-keyspace-events",
             "Ex", "--logfile", os.path.join(self.directory, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis = redis.Redis(host="127.0.0.1", port=port, password=password)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.redis.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        self.token_file = files.new_token(self.directory)
        token = files.read_token(self.token_file)
        head, record = launch.spawn(directory=self.directory, token=token, head=True, num_cpus=1, metadata=url,
                                    exit_with_parent=True)  # a daemon goes when this process does
        self.procs.append(head)
        self.address = record["address"]
        for _ in range(nodes - 1):
            self.procs.append(launch.spawn(directory=self.directory, token=token, head=False, address=self.address,
                                           num_cpus=1, exit_with_parent=True)[0])

    def connect(self, ray):
        ray.init(backend="cluster", address=self.address, token_file=self.token_file)

    def ops(self) -> int:
        stats = self.redis.info("commandstats")
        return sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_info",))

    def what_ops(self) -> str:
        return "Redis commands (INFO commandstats, INFO itself left out)"

    def stop(self, ray):
        ray.shutdown()
        for proc in reversed(self.procs):
            self.launch.stop_pid(proc.pid)
            proc.wait()
        self.redis.close()
        self.redis_proc.terminate()
        self.redis_proc.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


# --- Ray: cluster_utils.Cluster ------------------------------------------------------------------------

class RayNodes:
    def __init__(self, nodes):
        os.environ["RAY_event_stats_print_interval_ms"] = "1000"  # the GCS logs its handlers' counts each second
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        for _ in range(nodes - 1):
            self.cluster.add_node(num_cpus=1)
        self.cluster.wait_for_nodes()
        self.address = self.cluster.address

    def connect(self, ray):
        ray.init(address=self.address, log_to_driver=False)

    def ops(self) -> int:
        """The GCS's gRPC requests handled so far, from the latest event stats in its log (written every second)."""
        path = os.path.join(self.cluster.head_node.get_session_dir_path(), "logs", "gcs_server.out")
        time.sleep(1.2)  # the next print
        with open(path, errors="replace") as f:
            text = f.read()
        dumps = text.split("Gcs Debug state:")
        last = dumps[-2] if len(dumps) > 2 else dumps[-1]  # the last complete dump (each event loop's counts)
        counts = re.findall(r"\.grpc_server\.\w+ - (\d+) total", last)
        if not counts:
            raise RuntimeError(f"no gRPC handler counts in the GCS's event stats ({path})")
        return sum(int(n) for n in counts)

    def what_ops(self) -> str:
        return "GCS gRPC requests handled (the event stats in gcs_server.out)"

    def stop(self, ray):
        ray.shutdown()
        self.cluster.shutdown()


def child_main(engine, nodes, n_tasks, task_ms, n_actors, out):
    if engine == "ray":
        import ray
        cluster = RayNodes(nodes)
    else:
        import anyray as ray
        cluster = AnyrayNodes(nodes)
    result = {"engine": engine, "nodes": nodes}
    try:
        cluster.connect(ray)
        result.update(measure(ray, cluster, nodes, n_tasks, task_ms, n_actors))
    finally:
        cluster.stop(ray)
    with open(out, "w") as f:
        json.dump(result, f)


def measure(ray, cluster, nodes, n_tasks, task_ms, n_actors):
    @ray.remote(num_cpus=1)
    def nap(ms):
        time.sleep(ms / 1e3)
        return ray.get_runtime_context().get_node_id()

    @ray.remote(num_cpus=0)
    class Holder:
        def where(self):
            return ray.get_runtime_context().get_node_id()

    deadline = time.monotonic() + 120
    while sum(1 for n in ray.nodes() if n.get("Alive", True)) < nodes:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(ray.nodes())} of {nodes} nodes joined within 120 s")
        time.sleep(0.1)
    ray.get([nap.remote(task_ms) for _ in range(4 * nodes)])  # warm: workers on the nodes
    r = {"ops_counted": cluster.what_ops()}

    o0, t0 = cluster.ops(), time.perf_counter()
    time.sleep(IDLE_S)
    o1, t1 = cluster.ops(), time.perf_counter()
    r["idle ops/s/node"] = (o1 - o0) / (t1 - t0) / nodes

    t = time.perf_counter()
    where = ray.get([nap.remote(task_ms) for _ in range(n_tasks)])
    t = time.perf_counter() - t
    o2, t2 = cluster.ops(), time.perf_counter()
    ideal = nodes * 1e3 / task_ms
    counts = [where.count(x) for x in set(where)]
    r.update({"tasks/s": n_tasks / t, "tasks share of ideal": n_tasks / t / ideal, "tasks s": t,
              "task nodes used": len(counts), "tasks on the busiest node": max(counts),
              "tasks on the idlest node": min(counts) if len(counts) == nodes else 0,
              "tasks ops/s/node": (o2 - o1) / (t2 - t1) / nodes, "tasks ops per task": (o2 - o1) / n_tasks})

    t = time.perf_counter()
    actors = [Holder.options(scheduling_strategy="SPREAD").remote() for _ in range(n_actors)]
    spots = ray.get([a.where.remote() for a in actors])
    t = time.perf_counter() - t
    for a in actors:
        ray.kill(a)
    o3, t3 = cluster.ops(), time.perf_counter()
    counts = [spots.count(x) for x in set(spots)]
    r.update({"actors/s (create + first call)": n_actors / t, "actors s": t, "actor nodes used": len(counts),
              "actors on the busiest node": max(counts),
              "actors ops/s/node": (o3 - o2) / (t3 - t2) / nodes, "actors ops per actor": (o3 - o2) / n_actors})
    return r


# --- the runner ------------------------------------------------------------------------------------------

def run_child(engine, args):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, str(args.nodes), str(args.tasks),
               str(args.task_ms), str(args.actors), out]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            stderr = f"timed out after {args.timeout}s"
        finally:
            try:  # the child's whole group: daemons, raylets, workers that outlived it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
        if proc.returncode != 0 or not os.path.exists(out):
            return {"engine": engine, "_error": f"exit {proc.returncode}: {stderr.strip()[-1500:]}"}
        with open(out) as f:
            return json.load(f)


ROWS = [("tasks/s", "{:,.0f}"), ("tasks share of ideal", "{:.0%}"), ("task nodes used", "{}"),
        ("tasks on the busiest node", "{}"), ("tasks on the idlest node", "{}"),
        ("actors/s (create + first call)", "{:.1f}"), ("actor nodes used", "{}"), ("actors on the busiest node", "{}"),
        ("idle ops/s/node", "{:.1f}"), ("tasks ops/s/node", "{:.1f}"), ("tasks ops per task", "{:.2f}"),
        ("actors ops/s/node", "{:.1f}"), ("actors ops per actor", "{:.2f}")]


def table(results, args):
    cols = [r["engine"] for r in results]
    lines = ["| measure | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for key, f in ROWS:
        cells = []
        for r in results:
            cells.append("error" if "_error" in r else f.format(r[key]) if key in r else "")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    notes = [f"{args.nodes} nodes of 1 CPU on {os.cpu_count()} cores; {args.tasks} tasks that sleep {args.task_ms} ms "
             f"(ideal {args.nodes * 1000 / args.task_ms:,.0f} tasks/s); {args.actors} actors, SPREAD."]
    notes += [f"{r['engine']}: ops = {r['ops_counted']}" for r in results if "ops_counted" in r]
    notes += [f"{r['engine']}: {r['_error']}" for r in results if "_error" in r]
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=8)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--task-ms", type=float, default=10.0)
    p.add_argument("--actors", type=int, default=200)
    p.add_argument("--engines", default="anyray,ray")
    p.add_argument("--timeout", type=int, default=600, help="seconds per engine")
    p.add_argument("--json", help="write the raw results here")
    args = p.parse_args()
    engines = args.engines.split(",")
    if any(e not in ("anyray", "ray") for e in engines) or args.nodes < 1 or args.tasks < 1 or args.actors < 1:
        p.error("--engines takes anyray and/or ray; --nodes, --tasks, --actors must be at least 1")
    results = []
    for engine in engines:
        t = time.perf_counter()
        results.append(run_child(engine, args))
        print(f"  {engine:<7} {time.perf_counter() - t:6.1f}s" + ("  ERROR" if "_error" in results[-1] else ""),
              file=sys.stderr, flush=True)
    print(table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)
    return 1 if any("_error" in r for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        e, nn, nt, ms, na, o = sys.argv[2:8]
        child_main(e, int(nn), int(nt), float(ms), int(na), o)
    else:
        sys.exit(main())
