"""Where one no-op task's time goes, on one anyray backend: submit, then get, per task.

    python benchmarks/per_task.py [--backend local] [--num-cpus 2] [--tasks 1000] [--reps 15]
    python benchmarks/per_task.py --profile            # and a cProfile of the driver thread's share

Prints, in microseconds per task (medians over ``--reps`` rounds, after warm-up rounds):

- ``async``: ``get([f.remote() for _ in range(n)])``, the ``async_tasks`` workload of ``run.py``;
- ``  submit part`` / ``  get part``: the same round timed at the end of the submit loop (on the local
  backend the tasks run on other threads meanwhile, sharing the GIL with it);
- ``sync``: ``get(f.remote())`` one at a time, the ``sync_tasks`` workload;
- the process's CPU time per task (user + system, all threads, averaged over all rounds) next to the wall
  time: on the local backend, whose work all holds the GIL, a wall time near the CPU time means nothing
  waits (on the others the workers' CPU is not counted).

``--profile`` adds cProfile's top functions (by own time) of the driver thread over the async rounds:
the calls made per task (``function calls / tasks``) is the figure to bring down.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="local")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    import anyray

    anyray.init(backend=args.backend, num_cpus=args.num_cpus)

    @anyray.remote
    def noop(x=None):
        return x

    n = args.tasks
    for _ in range(3):  # warm-up: threads or workers started, code paths warm
        anyray.get([noop.remote() for _ in range(n)])

    def cpu() -> float:
        t = os.times()
        return t.user + t.system

    def round_() -> tuple[float, float]:
        t0 = time.perf_counter()
        refs = [noop.remote() for _ in range(n)]
        t1 = time.perf_counter()
        anyray.get(refs)
        return t1 - t0, time.perf_counter() - t1

    c = cpu()  # the process's CPU clock ticks coarsely: read over all rounds
    rounds = [round_() for _ in range(args.reps)]
    cpu_async = (cpu() - c) / args.reps
    us = 1e6 / n
    total = statistics.median(s + g for s, g in rounds)
    print(f"backend {args.backend}, {args.num_cpus} CPUs, {n} no-op tasks a round, medians of {args.reps} rounds")
    print(f"async         {total * us:7.2f} us/task  ({n / total:,.0f} tasks/s), CPU {cpu_async * us:.2f} us/task")
    print(f"  submit part {statistics.median(s for s, _ in rounds) * us:7.2f} us/task")
    print(f"  get part    {statistics.median(g for _, g in rounds) * us:7.2f} us/task")
    sync = []
    c = cpu()
    for _ in range(max(3, args.reps // 3)):
        t = time.perf_counter()
        for _ in range(n):
            anyray.get(noop.remote())
        sync.append(time.perf_counter() - t)
    wall = statistics.median(sync)
    print(f"sync          {wall * us:7.2f} us/task  ({n / wall:,.0f} tasks/s), "
          f"CPU {(cpu() - c) / len(sync) * us:.2f} us/task")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(args.reps):
            anyray.get([noop.remote() for _ in range(n)])
        prof.disable()
        out = io.StringIO()
        stats = pstats.Stats(prof, stream=out)
        print(f"\ncProfile of the driver thread: {stats.total_calls / (n * args.reps):.0f} function calls per task")
        stats.sort_stats("tottime").print_stats(25)
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    anyray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
