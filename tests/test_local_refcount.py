"""The local backend frees an object once no ObjectRef to it is alive (reference counting)."""

import gc
import time

import numpy as np
import pytest

import anyray
from anyray.runtime import current_runtime


@pytest.fixture
def local():
    anyray.shutdown()
    anyray.init(backend="local", num_cpus=2)
    yield current_runtime()
    anyray.shutdown()


def usage_settles(runtime, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        gc.collect()
        runtime.counter.drain()
        usage = runtime.store.usage()
        if predicate(usage):
            return usage
        time.sleep(0.05)
    return runtime.store.usage()


def test_dropping_the_last_ref_frees_the_memory(local):
    base = local.store.usage()["bytes"]
    ref = anyray.put(np.zeros(10_000_000, dtype=np.uint8))
    assert local.store.usage()["bytes"] >= base + 10_000_000
    copy = ref  # a second ref keeps it
    del ref
    assert usage_settles(local, lambda u: False, timeout=0.3)["bytes"] >= base + 10_000_000
    del copy
    assert usage_settles(local, lambda u: u["bytes"] <= base)["bytes"] <= base


def test_a_ref_held_inside_a_stored_object_keeps_its_target(local):
    inner = anyray.put(np.ones(5_000_000, dtype=np.uint8))
    outer = anyray.put({"inner": inner})
    del inner
    assert usage_settles(local, lambda u: False, timeout=0.3)["bytes"] >= 5_000_000
    got = anyray.get(anyray.get(outer)["inner"])
    assert got.sum() == 5_000_000
    del got
    del outer
    assert usage_settles(local, lambda u: u["objects"] == 0)["objects"] == 0


def test_task_results_are_freed_when_their_refs_die(local):
    @anyray.remote
    def make(n):
        return np.ones(n, dtype=np.uint8)

    refs = [make.remote(1_000_000) for _ in range(5)]
    assert sum(int(a.sum()) for a in anyray.get(refs)) == 5_000_000
    del refs
    assert usage_settles(local, lambda u: u["objects"] == 0)["objects"] == 0
