"""The multiprocess backend's shared-memory store: zero-copy reads in every process, memory that comes
back when the last reference (in any process) is gone, a full store that says so, GPUs per worker."""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import anyray
from anyray.exceptions import ObjectStoreFullError
from anyray.runtime import current_runtime

DEADLINE = 60
MB = 1 << 20


@pytest.fixture
def runtime():
    anyray.shutdown()  # a runtime another test module left (the conformance suite's shared one)
    anyray.init(backend="multiprocess", num_cpus=2, num_gpus=2, object_store_memory=64 * MB)
    yield current_runtime()
    anyray.shutdown()


def shared_bytes(rt):
    return rt.store.usage()["shared_bytes"]


def wait_for(predicate, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def arena_mapping_of(array) -> str | None:
    """The file whose mapping in this process holds ``array``'s data, read from /proc/self/maps."""
    address = array.__array_interface__["data"][0]
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if start <= address < end:
                return parts[5] if len(parts) > 5 else ""
    return None


def test_a_worker_reads_a_large_array_from_shared_memory_without_a_copy(runtime):
    array = np.arange(2 * MB, dtype=np.uint8)
    ref = anyray.put(array)

    @anyray.remote
    def inspect(a):
        return arena_mapping_of(a), a.flags.writeable, int(a[-1]), os.getpid()

    mapping, writeable, last, pid = anyray.get(inspect.remote(ref), timeout=DEADLINE)
    assert pid != os.getpid()
    assert mapping == runtime.backend.node.arena.path  # the worker's array points into the session's arena
    assert writeable is False and last == 255
    local = anyray.get(ref)
    assert arena_mapping_of(local) == runtime.backend.node.arena.path and not local.flags.writeable


def test_a_large_task_result_lands_in_shared_memory(runtime):
    @anyray.remote
    def make():
        return np.full(MB, 7, dtype=np.uint8)

    out = anyray.get(make.remote(), timeout=DEADLINE)
    assert arena_mapping_of(out) == runtime.backend.node.arena.path
    assert out.sum() == 7 * MB


def test_memory_comes_back_when_the_last_reference_goes(runtime):
    base = shared_bytes(runtime)
    ref = anyray.put(np.ones(8 * MB, dtype=np.uint8))
    assert shared_bytes(runtime) >= base + 8 * MB
    view = anyray.get(ref)
    del ref
    time.sleep(0.5)
    assert shared_bytes(runtime) >= base + 8 * MB  # a live view keeps the range from reuse
    assert view[-1] == 1
    del view
    wait_for(lambda: shared_bytes(runtime) == base, "the array's memory to come back")


def test_a_ref_inside_another_object_keeps_its_object_alive(runtime):
    base = shared_bytes(runtime)
    inner = anyray.put(np.ones(4 * MB, dtype=np.uint8))
    outer = anyray.put({"payload": inner})
    del inner
    time.sleep(0.5)
    gc.collect()
    assert shared_bytes(runtime) >= base + 4 * MB
    assert anyray.get(anyray.get(outer)["payload"]).sum() == 4 * MB
    del outer
    wait_for(lambda: shared_bytes(runtime) == base, "the inner array's memory to come back")


def test_an_actor_holding_an_array_keeps_its_memory_until_it_lets_go(runtime):
    base = shared_bytes(runtime)

    @anyray.remote
    class Holder:
        def hold(self, refs):
            self.array = anyray.get(refs[0])  # a view into shared memory, kept past the call
            return int(self.array[0])

        def drop(self):
            del self.array
            return True

    holder = Holder.remote()
    ref = anyray.put(np.full(4 * MB, 3, dtype=np.uint8))
    assert anyray.get(holder.hold.remote([ref]), timeout=DEADLINE) == 3
    del ref
    time.sleep(0.6)
    gc.collect()
    assert shared_bytes(runtime) >= base + 4 * MB
    assert anyray.get(holder.drop.remote(), timeout=DEADLINE)
    wait_for(lambda: shared_bytes(runtime) == base, "the actor's view to be released")


def test_a_full_store_raises_and_recovers(runtime):
    anyray.shutdown()  # with spilling turned off (on, the store makes room on disk: tests/test_spilling.py)
    anyray.init(backend="multiprocess", num_cpus=2, object_store_memory=64 * MB,
                _system_config={"automatic_object_spilling_enabled": False})
    runtime = current_runtime()
    first = anyray.put(np.zeros(40 * MB, dtype=np.uint8))
    with pytest.raises(ObjectStoreFullError, match="object_store_memory"):
        anyray.put(np.zeros(40 * MB, dtype=np.uint8))

    @anyray.remote
    def big():
        return np.zeros(40 * MB, dtype=np.uint8)

    with pytest.raises(ObjectStoreFullError):
        anyray.get(big.remote(), timeout=DEADLINE)  # a worker's result that does not fit fails, never hangs
    del first
    gc.collect()
    wait_for(lambda: shared_bytes(runtime) == 0, "the first array to be freed")
    assert anyray.get(anyray.put(np.ones(40 * MB, dtype=np.uint8))).sum() == 40 * MB


def test_gpus_are_given_to_workers_through_cuda_visible_devices(runtime):
    @anyray.remote(num_gpus=1)
    def visible():
        time.sleep(0.3)
        return os.environ.get("CUDA_VISIBLE_DEVICES"), anyray.get_gpu_ids()

    results = anyray.get([visible.remote(), visible.remote()], timeout=DEADLINE)
    assert sorted(env for env, _ in results) == ["0", "1"]  # both at once, each on its own GPU
    assert all(env == str(ids[0]) and len(ids) == 1 for env, ids in results)

    @anyray.remote(num_gpus=2)
    class Trainer:
        def devices(self):
            return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert anyray.get(Trainer.remote().devices.remote(), timeout=DEADLINE) == "0,1"


def test_a_ref_held_by_an_actor_keeps_its_object_after_the_driver_drops_it(runtime):
    base = shared_bytes(runtime)

    @anyray.remote
    class Keeper:
        def keep(self, refs):
            self.ref = refs[0]  # the ObjectRef itself, borrowed from the driver
            return True

        def total(self):
            return int(anyray.get(self.ref).sum())

        def forget(self):
            del self.ref
            return True

    keeper = Keeper.remote()
    ref = anyray.put(np.ones(4 * MB, dtype=np.uint8))
    assert anyray.get(keeper.keep.remote([ref]), timeout=DEADLINE)
    del ref
    time.sleep(0.6)
    gc.collect()
    assert anyray.get(keeper.total.remote(), timeout=DEADLINE) == 4 * MB  # still there for the actor
    assert anyray.get(keeper.forget.remote(), timeout=DEADLINE)
    wait_for(lambda: shared_bytes(runtime) == base, "the object to be freed once the actor let go")


def test_no_shared_memory_is_left_behind_by_duplicate_args_cancels_or_values_read_in_tasks(runtime):
    base = shared_bytes(runtime)
    big = anyray.put(np.ones(4 * MB, dtype=np.uint8))

    @anyray.remote
    def both(a, b):
        return int(a[0] + b[0])

    assert anyray.get(both.remote(big, big), timeout=DEADLINE) == 2  # the same large ref twice

    @anyray.remote
    def stuck(a):
        time.sleep(DEADLINE)

    ref = stuck.remote(np.ones(4 * MB, dtype=np.uint8))  # large arguments travel through shared memory
    time.sleep(0.5)
    anyray.cancel(ref, force=True)
    with pytest.raises(anyray.exceptions.TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)

    outer = anyray.put([big])

    @anyray.remote
    def read_inner(refs):
        inner = anyray.get(refs[0])[0]  # a ref found inside a value, used and dropped in the task
        return int(anyray.get(inner)[-1])

    assert anyray.get(read_inner.remote([outer]), timeout=DEADLINE) == 1
    del big, ref, outer
    wait_for(lambda: shared_bytes(runtime) == base, "every range to come back")
