"""A generator's values live in the store only while someone holds them: a long stream of large values,
taken and dropped one by one, runs in the memory of a few of them, and a producer with backpressure
waits for its consumer instead of filling the store."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import anyray
from anyray.runtime import current_runtime

MB = 1 << 20
ITEMS, ITEM_MB = 40, 16  # 640 MB streamed through a 128 MB store


@pytest.fixture(params=["local", "multiprocess"])
def runtime(request):
    anyray.shutdown()  # a runtime another test module left (the conformance suite's shared one)
    anyray.init(backend=request.param, num_cpus=2, object_store_memory=128 * MB)
    yield current_runtime()
    anyray.shutdown()


@anyray.remote
def chunks(k, mb):
    for i in range(k):
        yield np.full(mb * MB // 8, float(i))


def stored_bytes(rt) -> int:
    """The bytes the store holds: its table's objects ("bytes", which on multiprocess include the objects in
    shared memory) or the shared memory in use (which also holds freed objects a reader still pins), whichever
    is more. Their sum would count each value in shared memory twice."""
    usage = rt.store.usage()
    return max(usage.get("shared_bytes", 0), usage.get("bytes", 0))


def test_a_long_stream_taken_and_dropped_runs_in_the_memory_of_a_few_values(runtime):
    settled = 0
    gen = chunks.options(_generator_backpressure_num_objects=2).remote(ITEMS, ITEM_MB)
    for i, ref in enumerate(gen):
        value = anyray.get(ref)
        assert value[0] == value[-1] == float(i)
        del value, ref
        settled = max(settled, settle(runtime, 4 * ITEM_MB * MB))
    assert i == ITEMS - 1
    # The producer runs at most 2 values ahead of the consumer, and each value taken and dropped is freed a
    # moment later (its ref's decrement is drained, then the node frees it): after each step the store
    # settles at a few values of the 40 streamed (a stream that kept them would fill its 128 MB store).
    assert settled <= 4 * ITEM_MB * MB, f"{settled / MB:.0f} MB stored after a step"


def settle(rt, below: int) -> int:
    """What the store holds once the refs dropped so far are freed: it waits (generously) to fall below
    ``below``, and returns what it holds then, or at the deadline."""
    for _ in range(300):
        gc.collect()
        anyray.get(anyray.put(0))  # lets the runtime drain its dropped refs
        held = stored_bytes(rt)
        if held <= below:
            return held
        time.sleep(0.05)
    return held


def test_values_still_held_stay_and_come_back_when_dropped(runtime):
    held = list(chunks.remote(4, ITEM_MB))
    assert [anyray.get(ref)[0] for ref in held] == [0.0, 1.0, 2.0, 3.0]
    assert stored_bytes(runtime) >= 4 * ITEM_MB * MB
    del held
    gc.collect()
    deadline_bytes = ITEM_MB * MB
    for _ in range(200):
        if stored_bytes(runtime) < deadline_bytes:
            break
        gc.collect()
        anyray.get(anyray.put(0))  # lets the runtime drain its dropped refs
    assert stored_bytes(runtime) < deadline_bytes
