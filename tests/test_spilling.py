"""Object spilling with real processes: a full shared-memory store writes objects nobody reads to disk and
reads them back (in the driver, for a task, across two cluster nodes); the spill files are private and go
with their objects, at shutdown and after a crash; turned off, or with nowhere to write, the store says so."""

from __future__ import annotations

import gc
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_cluster import cli, two_nodes, wait_until

import anyray
from anyray.exceptions import ObjectStoreFullError
from anyray.runtime import current_runtime

MB = 1 << 20
STORE = 64 * MB
N = 2 * MB  # int64 elements: 16 MB an object


def spill_config(directory) -> dict:
    return {"object_spilling_config": json.dumps({"type": "filesystem", "params": {"directory_path": str(directory)}})}


@pytest.fixture
def fresh():
    anyray.shutdown()  # a runtime another test module left (the conformance suite's shared one)
    yield
    anyray.shutdown()


def spill_files(root) -> dict[str, os.stat_result]:
    """path -> stat of every spill file under ``root`` (one directory per node inside it)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name != "lock":
                try:
                    out[os.path.join(dirpath, name)] = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:  # restored or freed just now
                    pass
    return out


def disk_bytes(root) -> int:
    return sum(s.st_size for s in spill_files(root).values())


def wait_for(predicate, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def value(i: int) -> np.ndarray:
    return np.arange(N, dtype=np.int64) * 7 + i


def test_a_gigabyte_goes_through_a_64_mb_store_and_comes_back_intact(fresh, tmp_path):
    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE, _system_config=spill_config(tmp_path))
    store = current_runtime().store
    arena_file = store.arena.path
    refs, peak = [], 0
    for i in range(64):
        refs.append(anyray.put(value(i)))
        usage = store.usage()
        assert usage["shared_bytes"] <= STORE
        assert os.stat(arena_file).st_blocks * 512 <= STORE  # the arena's pages: never more than the store
        peak = max(peak, disk_bytes(tmp_path))
    assert peak >= 900 * MB  # most of the gigabyte went to disk
    files = spill_files(tmp_path)
    assert files and all(stat.S_IMODE(s.st_mode) == 0o600 for s in files.values())
    (node_dir,) = {os.path.dirname(p) for p in files}
    assert stat.S_IMODE(os.stat(node_dir).st_mode) == 0o700
    assert len(store.spilled_ids()) >= 60
    assert {r._id for r in refs} >= set(store.spilled_ids())

    for i in reversed(range(64)):  # each read brings one back, spilling others
        got = anyray.get(refs[i])
        assert got[0] == i and got[-1] == (N - 1) * 7 + i and np.array_equal(got, value(i))
        del got
        assert store.usage()["shared_bytes"] <= STORE

    @anyray.remote
    def checksum(a):
        return int(a[::4096].sum())

    assert anyray.get([checksum.remote(refs[i]) for i in (0, 31, 63)]) == [int(value(i)[::4096].sum())
                                                                         for i in (0, 31, 63)]
    before = disk_bytes(tmp_path)
    del refs[:48]
    wait_for(lambda: disk_bytes(tmp_path) < before, "spill files of dropped objects to go")
    wait_for(lambda: len(spill_files(tmp_path)) <= 16, "every dropped object's file to go")
    anyray.shutdown()
    assert spill_files(tmp_path) == {}
    assert os.listdir(tmp_path) == []


def test_a_task_gets_its_spilled_argument_and_results_written_by_workers_spill_too(fresh, tmp_path):
    anyray.init(backend="multiprocess", num_cpus=2, object_store_memory=STORE, _system_config=spill_config(tmp_path))
    store = current_runtime().store

    @anyray.remote
    def make(i):
        return value(i)

    @anyray.remote
    def check(a, i):
        return bool(np.array_equal(a, value(i)))

    first = make.remote(0)
    anyray.wait([first], timeout=120)  # sealed before the others, which two workers seal in either order
    made = [first] + [make.remote(i) for i in range(1, 10)]  # workers write 160 MB of results into a 64 MB store
    anyray.wait(made, num_returns=len(made), timeout=120)
    assert store.spilled_ids()
    assert first._id in store.spilled_ids()  # the oldest went first
    assert anyray.get(check.remote(first, 0))  # restored for the worker
    assert all(anyray.get([check.remote(r, i) for i, r in enumerate(made)]))
    assert [int(a[5]) for a in (anyray.get(r) for r in made)] == [35 + i for i in range(10)]

    # More than the store holds, read at once: what shared memory cannot take back is read from its file
    together = anyray.get(made)
    assert all(np.array_equal(a, value(i)) for i, a in enumerate(together))
    del together

    @anyray.remote
    def check_all(*arrays):
        return [bool(np.array_equal(a, value(i))) for i, a in enumerate(arrays)]

    assert all(anyray.get(check_all.remote(*made)))  # a task's arguments, likewise


def test_by_default_a_node_spills_into_a_private_directory_under_the_temp_dir(fresh):
    from anyray.adapters.node.spill import default_root

    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE)
    store = current_runtime().store
    refs = [anyray.put(value(i)) for i in range(5)]
    mine = store.usage()["spill_directory"]
    assert os.path.dirname(mine) == default_root() and store.spilled_ids()
    assert stat.S_IMODE(os.stat(default_root()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(mine).st_mode) == 0o700 and len(spill_files(mine)) == len(store.spilled_ids())
    assert all(np.array_equal(anyray.get(r), value(i)) for i, r in enumerate(refs))
    anyray.shutdown()
    assert not os.path.exists(mine)


def test_ray_s_object_spilling_directory_keyword_is_taken(fresh, tmp_path):
    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE, object_spilling_directory=str(tmp_path))
    refs = [anyray.put(value(i)) for i in range(5)]
    assert disk_bytes(tmp_path) >= 2 * N * 8
    assert np.array_equal(anyray.get(refs[0]), value(0))


def test_turned_off_a_full_store_raises_as_before(fresh, tmp_path):
    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE,
                _system_config={**spill_config(tmp_path), "automatic_object_spilling_enabled": False})
    refs = [anyray.put(value(i)) for i in range(3)]
    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        refs.append(anyray.put(value(3)))
    assert os.listdir(tmp_path) == []


def test_nowhere_to_spill_raises_a_full_store_that_says_what_to_do(fresh, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE,
                _system_config=spill_config(blocker / "spill"))
    refs = [anyray.put(value(i)) for i in range(3)]
    with pytest.raises(ObjectStoreFullError, match=r"spilling to .*a-file.* failed.*Free disk space"):
        refs.append(anyray.put(value(3)))
    assert np.array_equal(anyray.get(refs[0]), value(0))  # what was stored is still there


@pytest.mark.parametrize("config, error", [
    ({"object_spilling_config": json.dumps({"type": "smart_open", "params": {"uri": "s3://b"}})},
     "anyray spills to a local directory only"),
    ({"object_spilling_config": "{not json"}, "not valid JSON"),
    ({"object_spilling_config": json.dumps({"type": "filesystem", "params": {}})}, "directory_path"),
])
def test_a_spilling_config_anyray_cannot_use_is_refused_at_init(fresh, config, error):
    with pytest.raises(ValueError, match=error):
        anyray.init(backend="multiprocess", num_cpus=1, _system_config=config)


def test_spill_files_a_crashed_driver_left_are_removed_by_the_next_node_spilling_there(fresh, tmp_path):
    code = textwrap.dedent(f"""
        import json, os, sys, numpy as np, anyray
        anyray.init(backend="multiprocess", num_cpus=1, object_store_memory={STORE},
                    _system_config={spill_config(tmp_path)!r})
        refs = [anyray.put(np.ones({N}, dtype=np.int64)) for _ in range(6)]
        print("spilled", flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "spilled"
        left = spill_files(tmp_path)
        assert left
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert spill_files(tmp_path) == left  # a crash removes nothing by itself
    anyray.init(backend="multiprocess", num_cpus=1, object_store_memory=STORE, _system_config=spill_config(tmp_path))
    assert spill_files(tmp_path) == {}


def test_a_spilled_object_is_read_by_the_other_node_of_a_cluster(cluster_env, tmp_path):
    here, there = tmp_path / "spill-head", tmp_path / "spill-other"
    two_nodes(cluster_env, ("--num-cpus", "1", "--object-store-memory", str(STORE),
                            "--object-spilling-directory", str(here)),
              ("--num-cpus", "1", "--object-store-memory", str(STORE), "--resources", '{"There": 1}',
               "--object-spilling-directory", str(there)))
    code = textwrap.dedent(f"""
        import numpy as np, anyray
        anyray.init(backend="cluster", address="auto")
        N = {N}
        def value(i):
            return np.arange(N, dtype=np.int64) * 7 + i

        @anyray.remote(resources={{"There": 1}})
        def make(i):
            return [anyray.put(value(i))]  # lives on the other node; the driver gets a ref to it

        @anyray.remote(resources={{"There": 1}})
        def check(a, i):
            return bool(np.array_equal(a, value(i)))

        mine = [anyray.put(value(100 + i)) for i in range(8)]         # 128 MB on the head's 64 MB store
        theirs = [anyray.get(make.remote(i))[0] for i in range(8)]   # 128 MB made on the other node
        print("made", flush=True)
        input()
        assert all(anyray.get([check.remote(r, 100 + i) for i, r in enumerate(mine)]))  # pulled by the other node
        for i, r in enumerate(theirs):                                 # pulled here from the other node
            assert np.array_equal(anyray.get(r), value(i)), i
        print("checked", flush=True)
        input()
    """)
    run = subprocess.Popen([sys.executable, "-c", code], env=cluster_env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert run.stdout.readline().strip() == "made", run.stderr.read()
        assert disk_bytes(here) >= 48 * MB and disk_bytes(there) >= 48 * MB  # both nodes spilled
        assert "spilled to disk: " in cli(cluster_env, "status").stdout  # the head's store, as status shows it
        files = {**spill_files(here), **spill_files(there)}
        assert all(stat.S_IMODE(s.st_mode) == 0o600 for s in files.values())
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.stdout.readline().strip() == "checked", run.stderr.read()
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.wait(timeout=60) == 0, run.stderr.read()
        wait_until(lambda: not spill_files(here) and not spill_files(there),
                   "the spill files of the driver's objects to go")
    finally:
        run.kill()
        run.wait()
    cli(cluster_env, "stop")
    wait_until(lambda: not [d for d in (here, there) if os.path.isdir(d) and os.listdir(d)],
               "the nodes' spill directories to go with the nodes")
