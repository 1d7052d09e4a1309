"""The benchmark workloads, written once against a module ``ray_like`` (``anyray`` or ``ray``).

Run as a script, this file is the child process of ``run.py``: it imports one engine,
calls ``init``, runs ONE workload and writes its metrics as JSON::

    python benchmarks/workloads.py ENGINE BACKEND WORKLOAD NUM_CPUS QUICK OUT_JSON

ENGINE is ``anyray``, ``ray`` or ``dask`` (plain ``dask.distributed`` futures, see ``rawdask.py``);
BACKEND is the anyray backend name (ignored for the others).
Each metric is ``{"value": float, "unit": str, "better": "higher" | "lower"}``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy as np
import psutil

# Iteration counts: (normal, quick). Sized so a full run (local + Ray) stays under ~3 minutes
# on 2 cores; Ray's start and stop (~5 s) per workload process is most of it.
SIZES = {
    "sync": (1000, 100), "async": (1000, 200), "chain": (200, 50), "nested": (50, 10),
    "small_put": (2000, 200), "small_get": (5000, 500), "actor_sync": (500, 100),
    "actor_async": (1000, 200), "actor_create": (10, 3), "wait": (1000, 200), "wait_calls": (500, 100),
    "reps": (5, 2), "large_reps": (5, 2), "large_mb": (100, 100), "huge_mb": (1024, 256), "huge_reps": (3, 2),
    "spread": (200, 50), "yields": (2000, 200), "stream_mb": (100, 50), "stream_items": (10, 4),
}


def metric(value, unit, better):
    return {"value": value, "unit": unit, "better": better}


def median_time(fn, reps, warmup=1):
    """Median wall time of ``fn()`` over ``reps`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class Defs:
    """The remote functions and actor class, defined against the chosen module."""

    def __init__(self, ray_like):
        @ray_like.remote
        def noop(x=None):
            return x

        @ray_like.remote
        def nested(k):
            return len(ray_like.get([noop.remote(i) for i in range(k)]))

        @ray_like.remote
        class Actor:
            def call(self, x=None):
                return x

        self.noop, self.nested, self.Actor = noop, nested, Actor


def loop_rate(step, n, reps=3):
    """Calls of ``step()`` per second: median over ``reps`` loops of ``n``, after a warm-up loop."""
    for _ in range(min(n, 100)):
        step()

    def loop():
        for _ in range(n):
            step()

    return n / median_time(loop, reps, warmup=0)


# --- the workloads: each takes (ray_like, defs, size) and returns {metric name: metric} ---------

def w_sync_tasks(ray, d, size):
    rate = loop_rate(lambda: ray.get(d.noop.remote()), size["sync"])
    return {"sync tasks (submit + get, one at a time)": metric(rate, "tasks/s", "higher")}


def w_async_tasks(ray, d, size):
    n = size["async"]
    t = median_time(lambda: ray.get([d.noop.remote() for _ in range(n)]), size["reps"])
    return {f"async tasks ({n} submitted, then get all)": metric(n / t, "tasks/s", "higher")}


def w_chain(ray, d, size):
    n = size["chain"]

    def chain():
        ref = d.noop.remote(0)
        for _ in range(n - 1):
            ref = d.noop.remote(ref)
        ray.get(ref)

    return {f"chain of {n} dependent tasks": metric(median_time(chain, 3) * 1e3, "ms", "lower")}


def w_nested(ray, d, size):
    rate = loop_rate(lambda: ray.get(d.nested.remote(10)), size["nested"])
    return {"nested (task submits 10 tasks, gets them)": metric(rate, "outer tasks/s", "higher")}


def w_small_objects(ray, d, size):
    put_rate = loop_rate(lambda: ray.put(1), size["small_put"])
    ref = ray.put(1)
    get_rate = loop_rate(lambda: ray.get(ref), size["small_get"])
    return {"small put (an int)": metric(put_rate, "puts/s", "higher"),
            "small get (an int)": metric(get_rate, "gets/s", "higher")}


def w_large_objects(ray, d, size):
    mb = size["large_mb"]
    arr = np.random.default_rng(0).random(mb * 2**20 // 8)
    dst = np.empty_like(arr)
    t_copy = median_time(lambda: np.copyto(dst, arr), 5)
    puts, gets = [], []
    for _ in range(1 + size["large_reps"]):  # first round is the warm-up
        t = time.perf_counter()
        ref = ray.put(arr)
        puts.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = ray.get(ref)
        gets.append(time.perf_counter() - t)
        assert out.shape == arr.shape
        del out, ref
    t_put, t_get = statistics.median(puts[1:]), statistics.median(gets[1:])
    return {f"large put ({mb} MB numpy)": metric(arr.nbytes / t_put / 1e9, "GB/s", "higher"),
            f"large get ({mb} MB numpy)": metric(t_get * 1e3, "ms", "lower"),
            "large get / one memcpy of it": metric(t_get / t_copy, "x memcpy", "lower")}


def w_huge_put(ray, d, size):
    mb = size["huge_mb"]
    arr = np.random.default_rng(0).random(mb * 2**20 // 8)
    dst = np.empty_like(arr)
    t_copy = median_time(lambda: np.copyto(dst, arr), 3)
    dst = None  # noqa: F841 - the copy target goes before the puts need the memory
    puts = []
    for _ in range(1 + size["huge_reps"]):  # first round is the warm-up
        t = time.perf_counter()
        ref = ray.put(arr)
        puts.append(time.perf_counter() - t)
        del ref
    t_put = statistics.median(puts[1:])
    return {f"huge put ({mb} MB numpy)": metric(arr.nbytes / t_put / 1e9, "GB/s", "higher"),
            "huge put / memcpy speed": metric(t_copy / t_put, "x memcpy", "higher")}


def w_generators(ray, d, size):
    """A generator task streaming to the driver: small values one by one, and large arrays."""
    @ray.remote
    def count(n):
        for i in range(n):  # noqa: UP028 - Ray drives generators with send(), which range() lacks
            yield i

    @ray.remote
    def chunks(k, mb):
        arr = np.ones(mb * 2**20 // 8)
        for _ in range(k):
            yield arr

    n, k, mb = size["yields"], size["stream_items"], size["stream_mb"]

    def small():
        for ref in count.remote(n):
            ray.get(ref)

    def large():
        for ref in chunks.remote(k, mb):
            assert ray.get(ref).nbytes == mb * 2**20
            del ref

    t_small = median_time(small, size["reps"])
    t_large = median_time(large, size["large_reps"])
    return {f"generator: {n} small values streamed to the driver": metric(n / t_small, "yields/s", "higher"),
            f"generator: {k} x {mb} MB numpy streamed to the driver": metric(k * mb * 2**20 / t_large / 1e9,
                                                                             "GB/s", "higher")}


def w_actor_calls(ray, d, size):
    a = d.Actor.remote()
    ray.get(a.call.remote())
    sync_rate = loop_rate(lambda: ray.get(a.call.remote()), size["actor_sync"])
    n_async = size["actor_async"]
    t_async = median_time(lambda: ray.get([a.call.remote() for _ in range(n_async)]), size["reps"])
    return {"actor calls sync (call + get, one at a time)": metric(sync_rate, "calls/s", "higher"),
            f"actor calls async ({n_async} calls, then get all)": metric(n_async / t_async, "calls/s",
                                                                         "higher")}


def w_actor_create(ray, d, size):
    n = size["actor_create"]
    times = []
    for _ in range(1 + n):  # first one is the warm-up
        t = time.perf_counter()
        a = d.Actor.remote()
        ray.get(a.call.remote())
        times.append(time.perf_counter() - t)
        ray.kill(a)
    return {"actor creation (create + first call answered)": metric(statistics.median(times[1:]) * 1e3,
                                                                     "ms/actor", "lower")}


def w_wait_loop(ray, d, size):
    n = size["wait"]

    def loop():
        refs = [d.noop.remote() for _ in range(n)]
        while refs:
            _, refs = ray.wait(refs, num_returns=1)

    return {f"wait loop (submit {n}, wait num_returns=1 until done)": metric(median_time(loop, 3) * 1e3, "ms",
                                                                            "lower")}


def w_wait_scale(ray, d, size):
    """What one call of a wait loop costs as the list grows: ``wait(refs, num_returns=1)`` on the
    ``not_ready`` list of the call before, over 1,000 and 10,000 ready objects (the first calls of
    the loop, timed per call)."""
    calls = size["wait_calls"]
    out = {}
    per_call = {}
    for n in (1000, 10_000):
        def loop(n=n):
            refs = [ray.put(i) for i in range(n)]
            t = time.perf_counter()
            for _ in range(calls):
                _, refs = ray.wait(refs, num_returns=1)
            return (time.perf_counter() - t) / calls

        loop()  # warm-up
        per_call[n] = statistics.median(loop() for _ in range(3))
        out[f"wait loop: one call over {n:,} ready refs"] = metric(per_call[n] * 1e6, "us", "lower")
    out["wait loop: call over 10,000 / call over 1,000"] = metric(per_call[10_000] / per_call[1000], "x", "lower")
    return out


def pss_tree(pid):
    """PSS summed over a process and all its descendants: (bytes, processes)."""
    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, procs


def session_processes(ray):
    """Ray only: every process of this Ray session (daemons name the session dir; workers are their
    children), to cross-check that the driver's tree holds them all. Empty for anyray."""
    try:
        session = ray._private.worker._global_node.get_session_dir_path()
    except AttributeError:
        return []
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        if session in " ".join(p.info["cmdline"] or []):
            for q in [p] + p.children(recursive=True):
                found[q.pid] = q
    return list(found.values())


def w_idle_memory(ray, d, size):
    ray.get(d.noop.remote())
    time.sleep(2.0)  # let daemons that start asynchronously (Ray's dashboard, agents) settle
    pss, procs = pss_tree(os.getpid())
    tree = {p.pid for p in procs}
    stray = [f"{p.pid}:{p.name()}" for p in session_processes(ray) if p.pid not in tree]
    return {"idle memory (PSS, driver + all its descendants)": metric(pss / 2**20, "MiB", "lower"),
            "processes in the driver's tree": metric(len(procs), "procs", "lower"),
            "_stray": stray}


# --- two nodes: each engine starts two nodes of one CPU each on this machine -----------------------

def two_nodes(engine, ray):
    """Start two nodes of 1 CPU each, with resources {"node1": 1} and {"node2": 1}, and connect the driver
    (to node 1); return a function that stops them."""
    if engine == "ray":
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"node1": 1}})
        cluster.add_node(num_cpus=1, resources={"node2": 1})
        ray.init(address=cluster.address)
        return lambda: (ray.shutdown(), cluster.shutdown())
    import shutil
    import tempfile

    from anyray.adapters.cluster import files, launch

    directory = tempfile.mkdtemp(prefix="anyray-bench-")
    token_file = files.new_token(directory)
    token = files.read_token(token_file)
    head_proc, head = launch.spawn(directory=directory, token=token, head=True, num_cpus=1,
                                   resources={"node1": 1}, metadata="redis")
    node_proc, _ = launch.spawn(directory=directory, token=token, head=False, address=head["address"], num_cpus=1,
                                resources={"node2": 1})
    while len([n for n in _nodes_of(head["address"], token)]) < 2:
        time.sleep(0.05)
    ray.init(backend="cluster", address=head["address"], token_file=token_file)

    def stop():
        ray.shutdown()
        for proc in (node_proc, head_proc):
            launch.stop_pid(proc.pid)
            proc.wait()
        shutil.rmtree(directory, ignore_errors=True)

    return stop


def _nodes_of(address, token):
    from anyray.adapters.cluster.client import ClientLink, handshake, open_connection

    conn = open_connection(address, token)
    try:
        return ClientLink(conn, handshake(conn, "cli"), address).request("list", "nodes", timeout=30)
    finally:
        conn.close()


def w_spread(ray, size):
    @ray.remote(num_cpus=1)
    def busy(ms):
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass
        return ray.get_runtime_context().get_node_id()

    n, ms = size["spread"], 20
    ray.get([busy.remote(1) for _ in range(4)])  # warm: workers on both nodes
    t = time.perf_counter()
    nodes = ray.get([busy.remote(ms) for _ in range(n)])
    t = time.perf_counter() - t
    share = max(nodes.count(x) for x in set(nodes)) / n
    return {f"{n} tasks of {ms} ms CPU over two 1-CPU nodes": metric(n / t, "tasks/s", "higher"),
            "  same, as a share of the ideal (2 CPUs busy)": metric(n / t / (2e3 / ms), "of ideal", "higher"),
            "  busiest node's share of the tasks": metric(share, "share", "lower")}


def w_transfer(ray, size):
    mb = size["large_mb"]

    @ray.remote(resources={"node2": 1})
    def read(box):
        return int(ray.get(box[0])[-1])  # the whole array comes over before the read

    @ray.remote(resources={"node2": 1})
    def make(n):
        return np.full(n, 3.0)

    n = mb * 2**20 // 8
    ray.get(read.remote([ray.put(np.ones(10))]))  # warm: the worker on node 2, the connections
    there, back = [], []
    for _ in range(1 + size["large_reps"]):
        ref = ray.put(np.random.default_rng(0).random(n))
        t = time.perf_counter()
        ray.get(read.remote([ref]))
        there.append(time.perf_counter() - t)
        del ref
        t = time.perf_counter()
        out = ray.get(make.remote(n))  # made on node 2 (about 0.1 s of np.full and storing), read here
        back.append(time.perf_counter() - t)
        assert out.shape == (n,)
        del out
    nbytes = n * 8
    return {f"{mb} MB array to another node (task there reads it)": metric(
                nbytes / statistics.median(there[1:]) / 1e9, "GB/s", "higher"),
            f"{mb} MB result made on another node, submit to get": metric(
                statistics.median(back[1:]) * 1e3, "ms", "lower")}


def w_actor_elsewhere(ray, size):
    @ray.remote(num_cpus=0, resources={"node2": 0.01})
    class Echo:
        def echo(self, i):
            return i

    echo = Echo.remote()
    warm = time.perf_counter() + 1.0  # its process started there, the connections made
    while time.perf_counter() < warm:
        ray.get(echo.echo.remote(0))
    rate = loop_rate(lambda: ray.get(echo.echo.remote(1)), size["actor_sync"])
    return {"actor calls sync to an actor on the other node": metric(rate, "calls/s", "higher")}


TWO_NODE_WORKLOADS = {"spread": w_spread, "transfer": w_transfer,  # engines with several nodes only
                      "actor_elsewhere": w_actor_elsewhere}

WORKLOADS = {
    "startup": None,  # measured around import and init in main()
    "idle_memory": w_idle_memory,
    "sync_tasks": w_sync_tasks,
    "async_tasks": w_async_tasks,
    "chain": w_chain,
    "nested": w_nested,
    "small_objects": w_small_objects,
    "large_objects": w_large_objects,
    "huge_put": w_huge_put,
    "generators": w_generators,
    "actor_calls": w_actor_calls,
    "actor_create": w_actor_create,
    "wait_loop": w_wait_loop,
    "wait_scale": w_wait_scale,
    **TWO_NODE_WORKLOADS,
}


def main(engine, backend, workload, num_cpus, quick, out_path):
    t0 = time.perf_counter()
    if engine == "ray":
        import ray as ray_like
        init_kwargs = {}
    elif engine == "dask":
        import rawdask as ray_like
        init_kwargs = {}
    else:
        import anyray as ray_like
        init_kwargs = {"backend": backend}
    t1 = time.perf_counter()
    size = {k: v[1 if quick else 0] for k, v in SIZES.items()}
    if workload in TWO_NODE_WORKLOADS:
        stop = two_nodes(engine, ray_like)
        try:
            result = TWO_NODE_WORKLOADS[workload](ray_like, size)
        finally:
            stop()
        with open(out_path, "w") as f:
            json.dump(result, f)
        return
    ray_like.init(num_cpus=num_cpus, **init_kwargs)
    t2 = time.perf_counter()
    if workload == "startup":
        result = {"import": metric((t1 - t0) * 1e3, "ms", "lower"),
                  "init(num_cpus=...) (first call in a fresh process)": metric((t2 - t1) * 1e3, "ms", "lower")}
    else:
        result = WORKLOADS[workload](ray_like, Defs(ray_like), size)
    children = psutil.Process().children(recursive=True)
    ray_like.shutdown()
    # Ray's daemons exit some time after shutdown(); wait, so none lingers into the next measurement.
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    eng, be, wl, ncpu, q, out = sys.argv[1:7]
    main(eng, be, wl, float(ncpu) if "." in ncpu else int(ncpu), q == "1", out)
