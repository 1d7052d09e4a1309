"""The local backend's queues: work queued behind a burst still starts as soon as resources free up."""

import threading

import pytest

import anyray
from anyray.exceptions import TaskCancelledError

WAIT = 30.0


@pytest.fixture
def one_cpu():
    anyray.init(backend="local", num_cpus=1)
    yield
    anyray.shutdown()


def test_a_task_queued_behind_a_cancelled_one_starts_on_the_cpu_a_blocked_task_lends(one_cpu):
    started, may_block, later_ran = threading.Event(), threading.Event(), threading.Event()

    @anyray.remote(num_cpus=0)
    def gate():
        return later_ran.wait(WAIT)

    @anyray.remote
    def holder(refs):
        started.set()
        may_block.wait(WAIT)
        return anyray.get(refs[0], timeout=WAIT)  # lends its CPU while it waits

    @anyray.remote
    def later():
        later_ran.set()
        return "ran"

    held = holder.remote([gate.remote()])
    assert started.wait(WAIT)
    cancelled = later.remote()
    queued = [later.remote() for _ in range(3)]
    anyray.cancel(cancelled)
    may_block.set()
    assert anyray.get(queued, timeout=WAIT) == ["ran"] * 3
    assert anyray.get(held, timeout=WAIT) is True
    with pytest.raises(TaskCancelledError):
        anyray.get(cancelled, timeout=WAIT)


def test_a_burst_of_tasks_all_run_and_each_one_queued_behind_it_too(one_cpu):
    @anyray.remote
    def square(x):
        return x * x

    refs = [square.remote(i) for i in range(2000)]
    assert anyray.get(refs, timeout=WAIT) == [i * i for i in range(2000)]
    assert anyray.get(square.remote(3), timeout=WAIT) == 9


def test_a_loop_of_submit_then_get_keeps_the_thread_count_flat():
    """Each task a caller gets right after submitting it runs in the caller's thread; the pool threads
    woken for it meanwhile must not pile up (they did, one more every few calls, past a hundred)."""
    anyray.init(backend="local", num_cpus=2)
    try:
        @anyray.remote
        def noop(x=None):
            return x

        before = threading.active_count()
        for i in range(3000):
            assert anyray.get(noop.remote(i)) == i  # no timeout: the caller runs it itself
        assert threading.active_count() - before <= 4
        # and work that nobody waits for still starts on the pool's threads, two at a time
        release = threading.Event()

        @anyray.remote
        def hold(i):
            release.wait(WAIT)
            return i

        held = [hold.remote(i) for i in range(4)]
        ready, _ = anyray.wait(held, num_returns=1, timeout=0.5)
        assert ready == []  # two are running, held; two wait for a CPU
        release.set()
        assert anyray.get(held, timeout=WAIT) == [0, 1, 2, 3]
    finally:
        anyray.shutdown()


def test_tasks_nobody_waits_for_start_at_once_on_every_cpu():
    anyray.init(backend="local", num_cpus=3)
    try:
        started = [threading.Event() for _ in range(3)]

        @anyray.remote
        def mark(i):
            started[i].set()
            for event in started:  # each waits until all three run at the same time
                assert event.wait(WAIT)
            return i

        refs = [mark.remote(i) for i in range(3)]
        assert all(event.wait(WAIT) for event in started)
        assert anyray.get(refs, timeout=WAIT) == [0, 1, 2]
    finally:
        anyray.shutdown()
