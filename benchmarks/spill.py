"""Object spilling: GB/s of putting more than the store holds (spilling) and of reading it back (restoring).

    python benchmarks/spill.py                       # anyray (multiprocess) and Ray, 1 GB through a 128 MB store
    python benchmarks/spill.py --gb 0.5 --engine anyray

Each engine runs in a fresh child process (``run.run_json_child``) with the same store size and a spill
directory of its own under the temp dir: Ray's ``object_store_memory`` and ``object_spilling_config``,
anyray's the same spelling. The child puts ``--gb`` of 16 MB NumPy arrays, each ref kept (so all but the
store's worth go to disk): ``put`` GB/s; then gets each back in put order, checking its contents and
dropping the value before the next (each read restores one object, spilling another): ``get`` GB/s. Ray's
minimum store is 75 MB, hence 128 MB here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1 << 20
OBJECT = 16 * MB


def disk_bytes(root: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def child(engine: str, store_mb: int, gb: float, out: str) -> None:
    import numpy as np

    if engine == "anyray":
        import anyray as ray_like

        kwargs = {"backend": "multiprocess"}
    else:
        import ray as ray_like

        kwargs = {}
    spill_dir = tempfile.mkdtemp(prefix=f"spill-bench-{engine}-")
    try:
        ray_like.init(num_cpus=1, object_store_memory=store_mb * MB, **kwargs, _system_config={
            "object_spilling_config": json.dumps({"type": "filesystem", "params": {"directory_path": spill_dir}})})
        count = int(gb * 1024 * MB) // OBJECT
        arrays = [np.full(OBJECT // 8, i, dtype=np.int64) for i in range(4)]
        ray_like.get(ray_like.put(arrays[0]))  # warm up
        t = time.perf_counter()
        refs = [ray_like.put(arrays[i % 4]) for i in range(count)]
        put_s = time.perf_counter() - t
        on_disk = disk_bytes(spill_dir)
        t = time.perf_counter()
        for i, ref in enumerate(refs):
            value = ray_like.get(ref)
            assert value[0] == i % 4 and value[-1] == i % 4, f"object {i} came back wrong"
            del value
        get_s = time.perf_counter() - t
        total = count * OBJECT / 1e9
        result = {"put_gbps": total / put_s, "get_gbps": total / get_s, "objects": count,
                  "spilled_mb_after_put": on_disk / MB}
        del refs
        ray_like.shutdown()
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    with open(out, "w") as f:
        json.dump(result, f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", action="append", choices=["anyray", "ray"], help="default: both")
    p.add_argument("--store-mb", type=int, default=128)
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--child", nargs=4, metavar=("ENGINE", "STORE_MB", "GB", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        engine, store_mb, gb, out = args.child
        child(engine, int(store_mb), float(gb), out)
        return 0
    sys.path.insert(0, HERE)
    from run import run_json_child

    rows = []
    for engine in args.engine or ["anyray", "ray"]:
        r = run_json_child([sys.executable, os.path.abspath(__file__), "--child", engine, str(args.store_mb),
                            str(args.gb)], args.timeout)
        if "_error" in r:
            rows.append(f"| {engine} | error: {r['_error'][-300:]} | | |")
        else:
            rows.append(f"| {engine} | {r['put_gbps']:.2f} | {r['get_gbps']:.2f} | {r['spilled_mb_after_put']:,.0f} |")
    print(f"{args.gb:g} GB of 16 MB arrays through a {args.store_mb} MB store\n")
    print("| engine | put (spill) GB/s | get (restore) GB/s | MB on disk after the puts |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
