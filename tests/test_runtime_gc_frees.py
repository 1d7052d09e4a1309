"""Objects freed from a ``__del__`` (a dropped generator's items nobody took) are freed safely wherever the
garbage collector runs it, even inside the store's own locked sections (it deadlocked there: a conformance
run hung in ``wait``)."""

import gc
import threading

import pytest

import anyray
from anyray.current import require_runtime

WAIT = 30.0


@pytest.fixture(params=["local", "multiprocess"])
def runtime(request):
    anyray.init(backend=request.param, num_cpus=1)
    yield require_runtime()
    anyray.shutdown()


def test_a_generator_collected_inside_the_stores_lock_does_not_hang(runtime):
    @anyray.remote
    def count_to(n):
        yield from range(n)

    gen = count_to.options(_generator_backpressure_num_objects=10).remote(5)  # its acks are freed with it
    assert anyray.get(next(gen), timeout=WAIT) == 0
    assert anyray.get(gen.completed(), timeout=WAIT) is None  # every item is stored: 4 of them never taken
    cycle = [gen]
    cycle.append(cycle)  # only the cycle collector frees it
    del gen, cycle
    collected = threading.Event()

    def collect_in_the_lock():
        gc.disable()  # nothing else collects it first
        with runtime.store._lock:  # as a collection that lands inside a store call (a wait, a seal)
            gc.collect()
        collected.set()

    thread = threading.Thread(target=collect_in_the_lock, daemon=True)
    try:
        thread.start()
        assert collected.wait(WAIT), "the collector's __del__ hung on the store's lock"
    finally:
        gc.enable()
    assert anyray.get(anyray.put(7), timeout=WAIT) == 7  # the store works on
