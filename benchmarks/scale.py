"""Scale curves: time and memory per task, per small object and per actor as the work grows.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--engines multiprocess,cluster,ray]
                               [--kinds tasks,puts,actors] [--quick] [--json out.json] [--plot]

For each (kind, size, engine) a fresh child process (this file, ``--child``) calls ``init(num_cpus=2)``
and measures one of:

- ``tasks``: both CPUs are first held by two tasks that wait for a file, then N no-op tasks are
  submitted: they all stay pending. Memory is read with every task pending, then the file is made,
  and the driver gets all N results. Time per task = (submit + drain) / N.
- ``puts``: N ``put(1)`` whose refs are all held: time per put and memory per stored object.
- ``actors``: N actors of ``num_cpus=1`` created while both CPUs are held, so every creation stays
  pending (no engine here can hold 10^3 live actor processes on 2 cores): memory per pending actor.

Memory is read the same way for every engine: RSS and USS of the driver and of every process below it
(anyray: the node daemon and workers of the cluster backend, the node lives in the driver on
multiprocess; Ray: raylet, gcs_server, dashboard, workers, which ``ray.init`` starts below the driver),
before and after the N submissions; the figure per task is the delta divided by N. After the results
are fetched and the refs dropped, the memory is read again ("left after"), to show growth that outlives
the work. ``--plot`` draws the curves (log x axis) into ``benchmarks/scale-*.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from run import run_json_child  # noqa: E402 - the child runner every benchmark here shares

DEFAULT_SIZES = {"tasks": [10**4, 10**5, 10**6], "puts": [10**4, 10**5, 10**6], "actors": [10**3, 10**4]}
QUICK_SIZES = {"tasks": [10**3, 10**4], "puts": [10**3, 10**4], "actors": [100, 300]}
ENGINES = ["multiprocess", "cluster", "ray"]


# --- the child: one (kind, size, engine) ---------------------------------------------------------

def memory(pid):
    """{"driver": (rss, uss), "below": (rss, uss)}: the driver and the sum over its descendants."""
    root = psutil.Process(pid)
    out = {"driver": [0, 0], "below": [0, 0]}
    for p in [root] + root.children(recursive=True):
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        key = "driver" if p.pid == pid else "below"
        out[key][0] += info.rss
        out[key][1] += info.uss
    return out


def cpu_seconds(pid):
    """User + system CPU seconds of the driver and every live process below it (a load-proof cost: on a
    busy machine wall time measures the other users too)."""
    root = psutil.Process(pid)
    total = 0.0
    for p in [root] + root.children(recursive=True):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def delta(after, before, n):
    """Bytes per item, for the driver, the processes below it, and both."""
    per = {}
    for key in ("driver", "below"):
        per[f"{key}_rss"] = (after[key][0] - before[key][0]) / n
        per[f"{key}_uss"] = (after[key][1] - before[key][1]) / n
    per["total_rss"] = per["driver_rss"] + per["below_rss"]
    per["total_uss"] = per["driver_uss"] + per["below_uss"]
    return per


def settle():
    gc.collect()
    time.sleep(1.0)  # queues drained into the node, daemons' own allocations done


def hold_cpus(ray, gate, cpus):
    """Start ``cpus`` one-CPU tasks that wait until the file ``gate`` exists; return their refs once all run."""
    @ray.remote(num_cpus=1)
    def hold(gate, i):
        open(f"{gate}.{i}", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.005)
        return i

    refs = [hold.remote(gate, i) for i in range(cpus)]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(f"{gate}.{i}") for i in range(cpus)):
        if time.monotonic() > deadline:
            raise RuntimeError("the CPU-holding tasks did not start within 120 s")
        time.sleep(0.01)
    return refs


def child_tasks(ray, n, cpus, tmp, profile):
    @ray.remote
    def noop():
        return None

    ray.get([noop.remote() for _ in range(2 * cpus)])  # warm: workers up, the function exported
    gate = os.path.join(tmp, "gate")
    holders = hold_cpus(ray, gate, cpus)
    settle()
    before = memory(os.getpid())
    snap0 = start_profile() if profile else None
    c0, t0 = cpu_seconds(os.getpid()), time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    t_submit = time.perf_counter() - t0
    c_submit = cpu_seconds(os.getpid()) - c0
    settle()
    pending = memory(os.getpid())
    result = {"submit_us": t_submit / n * 1e6, "pending": delta(pending, before, n)}
    if profile:
        result["profile"] = top_allocations(snap0, n)
    t1 = time.perf_counter()
    open(gate, "w").close()
    c1 = cpu_seconds(os.getpid())
    ray.get(refs)
    t_drain = time.perf_counter() - t1
    c_drain = cpu_seconds(os.getpid()) - c1
    ray.get(holders)
    result["cpu_us"] = (c_submit + c_drain) / n * 1e6
    result["drain_us"] = t_drain / n * 1e6
    result["total_us"] = (t_submit + t_drain) / n * 1e6
    del refs
    settle()
    result["left"] = delta(memory(os.getpid()), before, n)
    return result


def child_puts(ray, n, cpus, tmp, profile):
    ray.get([ray.put(i) for i in range(100)])  # warm
    settle()
    before = memory(os.getpid())
    snap0 = start_profile() if profile else None
    c0, t0 = cpu_seconds(os.getpid()), time.perf_counter()
    refs = [ray.put(1) for _ in range(n)]
    t_put = time.perf_counter() - t0
    c_put = cpu_seconds(os.getpid()) - c0
    settle()
    stored = memory(os.getpid())
    result = {"total_us": t_put / n * 1e6, "cpu_us": c_put / n * 1e6, "pending": delta(stored, before, n)}
    if profile:
        result["profile"] = top_allocations(snap0, n)
    del refs
    settle()
    result["left"] = delta(memory(os.getpid()), before, n)
    return result


def child_actors(ray, n, cpus, tmp, profile):
    @ray.remote(num_cpus=1)
    class Counter:
        def ping(self):
            return 1

    gate = os.path.join(tmp, "gate")
    holders = hold_cpus(ray, gate, cpus)
    settle()
    before = memory(os.getpid())
    t0 = time.perf_counter()
    actors = [Counter.remote() for _ in range(n)]
    t_submit = time.perf_counter() - t0
    settle()
    pending = memory(os.getpid())
    result = {"total_us": t_submit / n * 1e6, "pending": delta(pending, before, n)}
    for a in actors:
        ray.kill(a)
    del actors
    open(gate, "w").close()
    ray.get(holders)
    settle()
    result["left"] = delta(memory(os.getpid()), before, n)
    return result


def start_profile():
    """Start tracing allocations; the snapshot ``top_allocations`` compares against."""
    import tracemalloc
    tracemalloc.start(8)
    return tracemalloc.take_snapshot()


def top_allocations(snap0, n, limit=12):
    """The lines that allocated most since ``snap0`` (tracing then stops): (where, bytes per item, blocks
    per item)."""
    import tracemalloc
    snap = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rows = []
    for stat in snap.compare_to(snap0, "lineno")[:limit]:
        frame = stat.traceback[0]
        where = f"{os.path.relpath(frame.filename, os.path.dirname(HERE))}:{frame.lineno}"
        rows.append([where, stat.size_diff / n, stat.count_diff / n])
    return rows


CHILDREN = {"tasks": child_tasks, "puts": child_puts, "actors": child_actors}


def child_main(engine, kind, n, cpus, out, profile):
    if engine == "ray":
        import ray
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    else:
        import anyray as ray
        ray.init(backend=engine, num_cpus=cpus)
    with tempfile.TemporaryDirectory() as tmp:
        result = CHILDREN[kind](ray, n, cpus, tmp, profile)
    result["peak_rss_driver"] = psutil.Process().memory_info().rss
    children = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(children, timeout=30)
    for p in alive:
        p.kill()
    with open(out, "w") as f:
        json.dump(result, f)


# --- the runner -----------------------------------------------------------------------------------

def run_child(engine, kind, n, args):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", engine, kind, str(n), str(args.num_cpus)]
    return run_json_child(cmd + (["--profile"] if args.profile else []), args.timeout)


def fmt_bytes(b):
    return f"{b:,.0f}"


def tables(rows):
    """Markdown, one table per kind."""
    out = []
    for kind in ("tasks", "puts", "actors"):
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        what = {"tasks": "pending task", "puts": "stored object", "actors": "pending actor"}[kind]
        out.append(f"\n### {kind}\n")
        head = ["engine", "N", "µs per item" + (" (submit + run)" if kind == "tasks" else " (submit)")]
        if kind == "tasks":
            head.append("µs submit")
        if kind != "actors":
            head.append("CPU µs per item (all processes)")
        head += [f"B per {what}, driver USS", "below driver USS", "total USS", "total RSS",
                 "B per item left after", "error"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in mine:
            res = r["result"]
            if "_error" in res:
                cells = [r["engine"], f"{r['n']:,}"] + [""] * (len(head) - 3) + [res["_error"][-200:]]
            else:
                p, left = res["pending"], res["left"]
                cells = [r["engine"], f"{r['n']:,}", f"{res['total_us']:.1f}"]
                if kind == "tasks":
                    cells.append(f"{res['submit_us']:.1f}")
                if kind != "actors":
                    cells.append(f"{res['cpu_us']:.1f}" if "cpu_us" in res else "")
                cells += [fmt_bytes(p["driver_uss"]), fmt_bytes(p["below_uss"]), fmt_bytes(p["total_uss"]),
                          fmt_bytes(p["total_rss"]), fmt_bytes(left["total_uss"]), ""]
            out.append("| " + " | ".join(c.replace("\n", " ").replace("|", "/") for c in cells) + " |")
        flat = flatness(mine)
        if flat:
            out.append("\n" + flat)
    return "\n".join(out)


def flatness(rows):
    """Per engine: the largest over the smallest time (and CPU time) per item across sizes (target <= 1.5)."""
    lines = []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        ok = [r["result"] for r in rows if r["engine"] == engine and "_error" not in r["result"]]
        if len(ok) > 1:
            ts = [res["total_us"] for res in ok]
            line = f"{engine}: max/min over the sizes of wall time per item {max(ts) / min(ts):.2f}x"
            cs = [res["cpu_us"] for res in ok if "cpu_us" in res]
            if len(cs) == len(ok):
                line += f", of CPU time per item {max(cs) / min(cs):.2f}x"
            lines.append(line)
    return "; ".join(lines)


def plot(rows, prefix):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for kind in ("tasks", "puts", "actors"):
        mine = [r for r in rows if r["kind"] == kind and "_error" not in r["result"]]
        if not mine:
            continue
        what = {"tasks": "pending task", "puts": "stored small object", "actors": "pending actor"}[kind]
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
        for engine in dict.fromkeys(r["engine"] for r in mine):
            pts = sorted((r["n"], r["result"]) for r in mine if r["engine"] == engine)
            label = engine if engine == "ray" else f"anyray[{engine}]"
            line, = ax_t.plot([n for n, _ in pts], [res["total_us"] for _, res in pts], marker="o", label=label)
            if all("cpu_us" in res for _, res in pts):
                ax_t.plot([n for n, _ in pts], [res["cpu_us"] for _, res in pts], marker="x", linestyle="--",
                          color=line.get_color(), label=f"{label}, CPU time")
            ax_m.plot([n for n, _ in pts], [res["pending"]["total_uss"] for _, res in pts], marker="o", label=label)
        ax_t.set_title(f"time per {'task (submit + run)' if kind == 'tasks' else kind[:-1] + ' (submit)'}"
                       " (dashed: CPU time, all processes)")
        ax_t.set_ylabel("µs")
        ax_m.set_title(f"memory per {what} (USS, driver + its processes)")
        ax_m.set_ylabel("bytes")
        for ax in (ax_t, ax_m):
            ax.set_xscale("log")
            ax.set_xlabel("N")
            ax.set_ylim(bottom=0)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = f"{prefix}-{kind}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", help="comma-separated N for tasks and puts (default 10^4,10^5,10^6; actors: 10^3,10^4)")
    p.add_argument("--actor-sizes", help="comma-separated N for actors (default 10^3,10^4)")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: multiprocess, cluster, ray")
    p.add_argument("--kinds", default="tasks,puts", help="comma-separated: tasks, puts, actors")
    p.add_argument("--skip", default="",
                   help="comma-separated ENGINE:KIND:N runs to leave out (e.g. ray:tasks:1000000)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--profile", action="store_true", help="tracemalloc in the driver: what each item holds")
    p.add_argument("--timeout", type=int, default=900, help="seconds per child process")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--markdown", help="write the tables here")
    p.add_argument("--plot", nargs="?", const=os.path.join(HERE, "scale"), metavar="PREFIX",
                   help="draw PNG curves to PREFIX-KIND.png (default benchmarks/scale-KIND.png)")
    args = p.parse_args()
    engines = args.engines.split(",")
    bad = [e for e in engines if e not in ENGINES]
    kinds = args.kinds.split(",")
    bad += [k for k in kinds if k not in CHILDREN]
    if bad:
        p.error(f"unknown engine(s)/kind(s) {bad}; engines: {ENGINES}, kinds: {list(CHILDREN)}")
    sizes = dict(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    try:
        if args.sizes:
            sizes["tasks"] = sizes["puts"] = [int(float(s)) for s in args.sizes.split(",")]
        if args.actor_sizes:
            sizes["actors"] = [int(float(s)) for s in args.actor_sizes.split(",")]
    except ValueError:
        p.error("--sizes and --actor-sizes take comma-separated whole numbers, e.g. 10000,1e5")
    skip = set(args.skip.split(",")) if args.skip else set()

    rows = []
    start = time.perf_counter()
    for kind in kinds:
        for n in sizes[kind]:
            for engine in engines:
                if f"{engine}:{kind}:{n}" in skip:
                    continue
                t = time.perf_counter()
                res = run_child(engine, kind, n, args)
                print(f"  {kind:<7} {n:>9,} {engine:<13} {time.perf_counter() - t:6.1f}s"
                      + (f"  ERROR {res['_error'][-300:]}" if "_error" in res else ""), file=sys.stderr, flush=True)
                for where, b, blocks in res.get("profile", ()):
                    print(f"      {b:9.1f} B {blocks:6.2f} blocks  {where}", file=sys.stderr)
                rows.append({"engine": engine, "kind": kind, "n": n, "result": res})
    md = tables(rows)
    footer = (f"\n{args.num_cpus} CPUs given to init; {os.cpu_count()} cores; total "
              f"{time.perf_counter() - start:.0f}s; 1-min load average at the end {os.getloadavg()[0]:.1f}. "
              "Memory: delta of USS (RSS where said) over the driver and every process below it, divided by N.")
    print(md + footer)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + footer + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    if args.plot:
        for path in plot(rows, args.plot):
            print(f"plot: {path}", file=sys.stderr)
    return 1 if any("_error" in r["result"] for r in rows) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        eng, knd, num, ncpu = sys.argv[2:6]  # then "--profile" if asked, and the result's path last
        child_main(eng, knd, int(num), int(ncpu), sys.argv[-1], "--profile" in sys.argv[6:-1])
    else:
        sys.exit(main())
