"""Remote functions: submission, return values, options, argument passing and nested tasks.

Proves that ``.remote()`` returns ObjectRefs at once, that ``num_returns``
splits results, that ``.options()`` overrides without changing the original,
that ``num_cpus`` limits how many tasks run at once (shown by when they ran)
and ``max_retries`` retries a failing task, or one whose worker process
died, the stated number of times,
that top-level ObjectRef arguments arrive as values while nested ones stay
refs, that tasks can submit and wait on tasks, and that large arguments
arrive intact and unchanged for the caller.
"""

import os
import signal as signals
import time

import numpy as np
import pytest

import anyray
from anyray.conformance.helpers import (
    DEADLINE,
    Barrier,
    Counter,
    Signal,
    assert_runtime_works,
    busy_interval,
    echo,
    most_at_once,
    wait_for_signal,
)
from anyray.exceptions import WorkerCrashedError
from anyray.object_ref import ObjectRef

pytestmark = pytest.mark.usefixtures("anyray_session")


def test_remote_returns_an_object_ref_at_once():
    signal = Signal.remote()
    ref = wait_for_signal.remote(signal, "done")
    assert isinstance(ref, anyray.ObjectRef)
    signal.send.remote()
    assert anyray.get(ref) == "done"


def test_a_remote_function_computes_its_value():
    @anyray.remote
    def add(a, b):
        return a + b

    assert anyray.get(add.remote(2, 3)) == 5
    assert anyray.get([add.remote(i, i) for i in range(10)]) == [2 * i for i in range(10)]


def test_keyword_arguments_and_defaults():
    @anyray.remote
    def describe(a, b=10, *rest, scale=1, **extra):
        return (a + b) * scale, rest, extra

    assert anyray.get(describe.remote(1)) == (11, (), {})
    assert anyray.get(describe.remote(1, b=2, scale=3)) == (9, (), {})
    assert anyray.get(describe.remote(1, 2, 3, 4, flag=True)) == (3, (3, 4), {"flag": True})


def _biggest_node() -> tuple[float, int]:
    """The most CPUs one alive node has, and how many nodes have that many."""
    cpus = [node["Resources"].get("CPU", 0) for node in anyray.nodes() if node["Alive"]]
    biggest = max(cpus)
    return biggest, cpus.count(biggest)


def test_remote_with_options_in_the_decorator():
    whole_node, room = _biggest_node()

    @anyray.remote(num_cpus=whole_node, max_retries=2, retry_exceptions=True)
    def hog(seconds, fail_until, counter):
        if counter is not None:  # not while measuring: a task waiting in get lends its CPUs
            attempt = anyray.get(counter.incr.remote(), timeout=DEADLINE)
            if attempt <= fail_until:
                raise ConnectionError(f"attempt {attempt}")
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    # num_cpus: a task needing a whole node runs alone on it, so no more run at once than there are such nodes.
    intervals = anyray.get([hog.remote(0.3, 0, None) for _ in range(room + 1)], timeout=120)
    assert most_at_once(intervals) <= room
    # max_retries with retry_exceptions: two failures are retried, a third attempt succeeds.
    counter = Counter.remote()
    assert len(anyray.get(hog.remote(0, 2, counter), timeout=120)) == 2
    assert anyray.get(counter.get.remote()) == 3
    counter = Counter.remote()
    with pytest.raises(ConnectionError, match="attempt 3"):
        anyray.get(hog.remote(0, 5, counter), timeout=120)
    assert anyray.get(counter.get.remote()) == 3


def test_num_returns_splits_the_result():
    @anyray.remote(num_returns=3)
    def three():
        return "a", "b", "c"

    refs = three.remote()
    assert isinstance(refs, list) and len(refs) == 3
    assert all(isinstance(r, anyray.ObjectRef) for r in refs)
    assert anyray.get(refs) == ["a", "b", "c"]


def test_num_returns_one_gives_a_single_ref_even_for_a_tuple():
    @anyray.remote(num_returns=1)
    def pair():
        return 1, 2

    ref = pair.remote()
    assert isinstance(ref, anyray.ObjectRef)
    assert anyray.get(ref) == (1, 2)


def test_num_return_vals_is_an_alias_of_num_returns():
    @anyray.remote(num_return_vals=2)
    def two():
        return 1, 2

    first, second = two.remote()
    assert anyray.get([first, second]) == [1, 2]


def test_options_override_without_changing_the_function():
    @anyray.remote
    def pair():
        return 1, 2

    first, second = pair.options(num_returns=2).remote()
    assert anyray.get(second) == 2
    assert anyray.get(pair.remote()) == (1, 2)
    assert anyray.get(pair.options(num_cpus=2, name="renamed").remote()) == (1, 2)


@pytest.mark.requires("concurrent")
def test_num_cpus_in_options_limits_how_many_run_at_once_and_leaves_the_function_alone():
    whole_node, room = _biggest_node()
    hog = busy_interval.options(num_cpus=whole_node)
    intervals = anyray.get([hog.remote(0.3) for _ in range(room + 1)], timeout=120)
    assert most_at_once(intervals) <= room

    # The function itself still takes one CPU: two of its calls run at once (they meet at a barrier).
    @anyray.remote
    def meet(barrier):
        return anyray.get(barrier.arrive.remote())

    barrier = Barrier.remote(2)
    assert anyray.get([meet.remote(barrier), meet.remote(barrier)], timeout=60) == [2, 2]


@pytest.mark.requires("worker_restart")
@pytest.mark.parametrize("max_retries, attempts", [(0, 1), (2, 3), (None, 4)])
def test_max_retries_retries_a_task_whose_worker_died(tmp_path, max_retries, attempts):
    log = tmp_path / "attempts"  # a file, not an actor: the killed worker may host actors (Dask)

    def die(path):
        with open(path, "a") as f:
            f.write("attempt\n")
        os.kill(os.getpid(), signals.SIGKILL)

    task = anyray.remote(die) if max_retries is None else anyray.remote(max_retries=max_retries)(die)
    with pytest.raises(WorkerCrashedError):
        anyray.get(task.remote(str(log)), timeout=120)
    assert log.read_text().count("attempt") == attempts  # Ray's default max_retries is 3
    assert_runtime_works()


@pytest.mark.requires("worker_restart")
def test_a_task_whose_worker_died_is_retried_on_a_fresh_worker(tmp_path):
    log = tmp_path / "pids"

    @anyray.remote(max_retries=1)
    def die_once(path):
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        if len(open(path).read().split()) == 1:
            os.kill(os.getpid(), signals.SIGKILL)
        return os.getpid()

    pid = anyray.get(die_once.remote(str(log)), timeout=120)
    first, second = map(int, log.read_text().split())
    assert pid == second != first
    assert_runtime_works()


def test_options_can_be_chained():
    @anyray.remote
    def triple():
        return 1, 2, 3

    refs = triple.options(num_returns=2).options(num_returns=3).remote()
    assert anyray.get(refs) == [1, 2, 3]


def test_a_task_returning_none():
    @anyray.remote
    def nothing():
        pass

    assert anyray.get(nothing.remote()) is None


def test_top_level_refs_arrive_as_values():
    @anyray.remote
    def kinds(a, b, *, c):
        return [type(v).__name__ for v in (a, b, c)], a + b + c

    a = anyray.put(1)
    b = echo.remote(2)
    c = anyray.put(3)
    assert anyray.get(kinds.remote(a, b, c=c)) == (["int", "int", "int"], 6)


def test_refs_nested_in_containers_are_passed_as_refs():
    @anyray.remote
    def unwrap(items, mapping):
        assert isinstance(items[0], ObjectRef)
        assert isinstance(mapping["key"], ObjectRef)
        return anyray.get(items[0]) + anyray.get(mapping["key"])

    inner = anyray.put(40)
    produced = echo.remote(2)
    assert anyray.get(unwrap.remote([inner], {"key": produced})) == 42


def test_a_task_waits_for_its_ref_arguments():
    signal = Signal.remote()
    upstream = wait_for_signal.remote(signal, 10)

    @anyray.remote
    def plus_one(x):
        return x + 1

    downstream = plus_one.remote(upstream)
    ready, _ = anyray.wait([downstream], timeout=0.2)
    assert ready == []
    signal.send.remote()
    assert anyray.get(downstream) == 11


def test_chained_tasks():
    @anyray.remote
    def inc(x):
        return x + 1

    ref = anyray.put(0)
    for _ in range(20):
        ref = inc.remote(ref)
    assert anyray.get(ref) == 20


def test_tasks_submit_and_get_tasks():
    @anyray.remote
    def leaf(x):
        return x * 2

    @anyray.remote
    def node(depth):
        if depth == 0:
            return anyray.get(leaf.remote(1))
        return sum(anyray.get([node.remote(depth - 1), node.remote(depth - 1)]))

    assert anyray.get(node.remote(3)) == 16


def test_tasks_put_and_wait_inside_tasks():
    @anyray.remote
    def inner():
        ref = anyray.put({"made": "inside"})
        ready, not_ready = anyray.wait([ref, echo.remote(1)], num_returns=2, timeout=30)
        assert not_ready == []
        return anyray.get(ready[0]), ref

    value, ref = anyray.get(inner.remote())
    assert value == {"made": "inside"}
    assert anyray.get(ref) == {"made": "inside"}


def test_large_numpy_arguments_arrive_intact():
    @anyray.remote
    def total(array, scale=1):
        return float(array.sum()) * scale, array.shape, array.dtype.str

    array = np.arange(2_000_000, dtype=np.float64)
    expected = float(array.sum())
    assert anyray.get(total.remote(array)) == (expected, (2_000_000,), array.dtype.str)
    assert anyray.get(total.remote(array=array, scale=2)) == (2 * expected, (2_000_000,), array.dtype.str)
    ref = anyray.put(array)
    assert anyray.get([total.remote(ref) for _ in range(3)]) == [(expected, (2_000_000,), array.dtype.str)] * 3


def test_large_numpy_results_arrive_intact():
    @anyray.remote
    def make(n):
        return np.arange(n, dtype=np.int64)

    out = anyray.get(make.remote(1_000_000))
    assert out.shape == (1_000_000,)
    assert out[0] == 0 and out[-1] == 999_999


def test_a_task_cannot_change_the_callers_array():
    @anyray.remote
    def scribble(array):
        try:
            array[0] = 42.0
        except ValueError:  # a read-only (zero-copy) argument
            pass
        return float(array[0])

    array = np.zeros(1_000_000)
    anyray.get(scribble.remote(array))
    assert array[0] == 0.0


def test_changing_an_array_after_remote_does_not_change_the_tasks_argument():
    signal = Signal.remote()

    @anyray.remote
    def first(_, array):
        return float(array[0])

    array = np.zeros(1_000_000)
    ref = first.remote(wait_for_signal.remote(signal), array)
    array[0] = 7.0
    signal.send.remote()
    assert anyray.get(ref) == 0.0


@pytest.mark.requires("concurrent")
def test_tasks_run_at_the_same_time():
    barrier = Barrier.remote(2)

    @anyray.remote
    def meet(barrier):
        return anyray.get(barrier.arrive.remote())

    assert sorted(anyray.get([meet.remote(barrier), meet.remote(barrier)], timeout=60)) == [2, 2]


@pytest.mark.requires("in_process")
def test_tasks_run_in_the_driver_process():
    @anyray.remote
    def pid():
        return os.getpid()

    assert anyray.get(pid.remote()) == os.getpid()


@pytest.mark.requires("processes")
def test_tasks_run_in_worker_processes():
    @anyray.remote
    def pid():
        return os.getpid()

    assert anyray.get(pid.remote()) != os.getpid()
