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
