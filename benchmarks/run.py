"""Run every workload on anyray backends and on reference engines, side by side; print a markdown table.

    python benchmarks/run.py --backend multiprocess --against ray [--num-cpus 2] [--quick]
                             [--only sync_tasks,chain] [--json out.json] [--markdown out.md]
    python benchmarks/run.py --backend dask --against ray --against dask   # the plugin's own overhead

Each (workload, engine) pair runs in a fresh child process (``workloads.py``), so startup and
memory are measured cleanly and no engine's state leaks into another's. References are real Ray
(``ray``) and plain ``dask.distributed`` futures (``dask``, the same work written for Dask directly).
Each ratio column is "> 1 means anyray is better": reference/anyray for times and memory,
anyray/reference for rates.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from workloads import TWO_NODE_WORKLOADS, WORKLOADS  # noqa: E402

MULTI_NODE_BACKENDS = {"cluster"}  # the anyray backends the two-node workloads run on
NO_DASK_WORKLOADS = {"generators"}  # plain Dask futures have no generator tasks


def run_child(engine, backend, workload, args):
    """Run one workload on one engine in a fresh process; its metrics, or {"_error": text}."""
    return run_json_child([sys.executable, os.path.join(HERE, "workloads.py"), engine, backend or "-", workload,
                           str(args.num_cpus), "1" if args.quick else "0"], args.timeout)


def run_json_child(cmd, timeout):
    """Run ``cmd`` plus a path it writes its JSON result to, in a process group of its own (a timeout, or
    the end, also stops whatever it started: Ray's daemons); the result, or {"_error": text}."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        proc = subprocess.Popen([*cmd, out], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"_error": f"timed out after {timeout}s"}
        finally:
            try:  # whatever the child left in its group (a daemon that outlived it)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.returncode != 0 or not os.path.exists(out):
            return {"_error": f"exit {proc.returncode}: {stderr.strip()[-2000:]}"}
        with open(out) as f:
            return json.load(f)


def fmt(value):
    if isinstance(value, int) or value >= 100:
        return f"{value:,.0f}"
    return f"{value:#.3g}" if value >= 0.01 else f"{value:#.2g}"


def ratio(a, r):
    """> 1 means anyray is better."""
    if a is None or r is None or a["value"] <= 0 or r["value"] <= 0:
        return ""
    x = a["value"] / r["value"] if a["better"] == "higher" else r["value"] / a["value"]
    return f"{x:.2f}x"


def table(results, names, columns, refs, skipped=None):
    """results[column][metric name] -> metric; columns are anyray backends then the reference engines
    ``refs``; ``skipped[metric name]``: the columns that did not run it (shown as "-")."""
    skipped = skipped or {}
    ours = [c for c in columns if c not in refs]
    head = ["workload", "unit"] + ours + list(refs)
    pairs = [(c, r) for r in refs for c in ours]
    head += [("ratio" if len(ours) == 1 else f"ratio {c}") + (f" vs {r}" if len(refs) > 1 else "") for c, r in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for n in names:
        m = next(results[c][n] for c in columns if n in results[c])
        unit = f"{m['unit']} ({'higher' if m['better'] == 'higher' else 'lower'} is better)"
        cells = [n, unit]
        for c in columns:
            missing = "-" if c in skipped.get(n, ()) else "error"
            cells.append(fmt(results[c][n]["value"]) if n in results[c] else missing)
        cells += [ratio(results[c].get(n), results[r].get(n)) for c, r in pairs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_anyray() -> None:
    """Compile anyray's modules to bytecode (``__pycache__``), as installing a wheel does, unless they are.

    The references run from installed files, bytecode included. A source checkout (an editable install) in an
    environment with ``PYTHONDONTWRITEBYTECODE=1`` has none, so every fresh process (the driver, a cluster's
    node daemon, a fork server) would compile each module it loads from source: about 2x the time of an
    ``import anyray`` and of a private cluster's ``init``."""
    import compileall
    import importlib.util

    folders = set()
    for name in ("anyray", "anyray.adapters", "anyray.conformance", "anyray_ray", "anyray_dask"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            folders.update(spec.submodule_search_locations)
    for folder in sorted(folders):
        if not compileall.compile_dir(folder, quiet=1):
            print(f"(could not compile everything in {folder}: some timings include compiling it)", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", action="append",
                   help="anyray backend to measure (repeatable; default: multiprocess, the default backend)")
    p.add_argument("--against", action="append", choices=["ray", "dask", "none"],
                   help="reference engine (repeatable): real Ray imported directly (the default), plain "
                        "dask.distributed futures, or none")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small iteration counts, for a smoke run")
    p.add_argument("--only", help="comma-separated workloads (default: all): " + ", ".join(WORKLOADS))
    p.add_argument("--timeout", type=int, default=300, help="seconds per child process")
    p.add_argument("--json", help="write the raw results here")
    p.add_argument("--markdown", help="write the table here as markdown")
    p.add_argument("--no-compile", action="store_true",
                   help="do not compile anyray's modules to bytecode first (see compile_anyray); the bytecode already "
                        "there is still used")
    args = p.parse_args()
    if not args.no_compile:
        compile_anyray()

    backends = args.backend or ["multiprocess"]
    workloads = args.only.split(",") if args.only else list(WORKLOADS)
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    references = {"ray": "Ray", "dask": "Dask futures"}  # engine -> column name
    chosen = [] if args.against == ["none"] else [e for e in (args.against or ["ray"]) if e != "none"]
    refs = [references[e] for e in chosen]
    engines = [("anyray", b, f"anyray[{b}]") for b in backends] + [(e, None, references[e]) for e in chosen]

    busy = psutil.cpu_percent(interval=1.0)  # before we start anything: others' load skews timings
    if busy > 20:
        print(f"warning: this machine is {busy:.0f}% busy before the run; timings will be noisy",
              file=sys.stderr)
    results = {col: {} for _, _, col in engines}
    names = []  # metric names, in workload order
    errors, notes = [], []
    skipped_runs = {}  # workload -> columns that do not run it
    origin = {}  # metric name -> its workload
    start = time.perf_counter()
    for w in workloads:
        for engine, backend, col in engines:
            if (w in TWO_NODE_WORKLOADS and (engine == "dask" or engine == "anyray"
                                             and backend not in MULTI_NODE_BACKENDS)) \
                    or (w in NO_DASK_WORKLOADS and engine == "dask"):
                skipped_runs.setdefault(w, set()).add(col)
                continue
            t = time.perf_counter()
            res = run_child(engine, backend, w, args)
            print(f"  {w:<14} {col:<12} {time.perf_counter() - t:6.1f}s"
                  + ("  ERROR" if "_error" in res else ""), file=sys.stderr, flush=True)
            if "_error" in res:
                errors.append(f"{w} on {col}: {res['_error']}")
            if res.get("_stray"):
                notes.append(f"{col}: processes outside the driver's tree, not counted: {res['_stray']}")
            results[col].update(res)
            names += [n for n in res if n not in names and not n.startswith("_")]
            origin.update({n: w for n in res})

    columns = [col for _, _, col in engines]
    skipped = {n: skipped_runs.get(origin[n], set()) for n in names}
    md = table(results, names, columns, refs, skipped)
    print(md)
    footer = (f"\n{args.num_cpus} CPUs given to init; {os.cpu_count()} cores on this machine; "
              f"CPU busy before the run {busy:.0f}%; {'--quick; ' if args.quick else ''}"
              f"total {time.perf_counter() - start:.0f}s, 1-min load average at the end {os.getloadavg()[0]:.1f}. "
              "Ratio > 1 means anyray is better (reference/anyray for times and memory, anyray/reference for "
              "rates).")
    print(footer)
    for line in notes + errors:
        print(line, file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n" + footer + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "errors": errors}, f, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
