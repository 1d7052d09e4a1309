"""Task leases on the cluster (adapters/cluster/leases.py, lease_host.py): a driver's plain tasks go
straight to a worker its node lent it. What a user can observe: the same results; a leased worker that
dies has its task retried (or WorkerCrashedError); the CPUs come back when the driver is idle, so another
driver's tasks run; a blocking get inside a leased task lends its CPU; cancel works; the switch turns
leases off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from test_cluster import WAIT, driver, start_head, two_nodes, wait_until

import anyray
from anyray import exceptions
from anyray.current import current_runtime


@pytest.fixture
def one_cpu(cluster_env, monkeypatch):
    """A one-node cluster with 1 CPU, and this process its driver, with leases on."""
    monkeypatch.delenv("ANYRAY_TASK_LEASES", raising=False)
    monkeypatch.delenv("ANYRAY_DIRECT_CALLS", raising=False)
    start_head(cluster_env, "--num-cpus", "1")
    anyray.init(backend="cluster", address="auto")
    yield cluster_env
    anyray.shutdown()


def _leases():
    return current_runtime().backend.scheduler.direct.leases


def _on_lease(ref) -> bool:
    sock = current_runtime().backend.scheduler.direct.waiting.get(ref._id)
    return sock is not None and sock.leased


@anyray.remote
def add(a, b):
    return a + b


@anyray.remote
def pid():
    return os.getpid()


@anyray.remote
def sleep(seconds):
    time.sleep(seconds)
    return seconds


def test_many_tasks_on_a_lease_give_the_same_results(one_cpu):
    ref = sleep.remote(0.2)
    assert _on_lease(ref)  # sent straight to a leased worker, not through the node
    assert anyray.get(ref, timeout=WAIT) == 0.2
    assert anyray.get([add.remote(i, i) for i in range(500)], timeout=WAIT) == [2 * i for i in range(500)]
    for i in range(50):
        assert anyray.get(add.remote(i, 1), timeout=WAIT) == i + 1
    ready, rest = anyray.wait([add.remote(i, 0) for i in range(20)], num_returns=20, timeout=WAIT)
    assert len(ready) == 20 and not rest


def test_a_leased_worker_killed_mid_task_has_its_task_retried(one_cpu, tmp_path):
    marker = tmp_path / "first-run"

    @anyray.remote(max_retries=1)
    def dies_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        return "second run"

    ref = dies_once.remote(str(marker))
    assert _on_lease(ref)
    assert anyray.get(ref, timeout=WAIT) == "second run"

    @anyray.remote(max_retries=0)
    def dies():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(exceptions.WorkerCrashedError):
        anyray.get(dies.remote(), timeout=WAIT)
    assert anyray.get(add.remote(1, 2), timeout=WAIT) == 3  # the node lends another worker


def test_the_cpus_go_back_when_the_driver_is_idle_so_another_drivers_task_runs(one_cpu):
    assert anyray.get(add.remote(1, 1), timeout=WAIT) == 2
    wait_until(lambda: anyray.available_resources().get("CPU") == 1, "the leased CPU to come back")
    other = driver(one_cpu, """
        @anyray.remote
        def f():
            return "ran"
        print(anyray.get(f.remote(), timeout=60))
    """)
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip().endswith("ran")


@anyray.remote
def job_of_nested():
    @anyray.remote
    def job():
        return anyray.get_runtime_context().get_job_id()

    return anyray.get_runtime_context().get_job_id(), anyray.get(job.remote())


def test_a_blocking_get_in_a_leased_task_lends_its_cpu(one_cpu):
    @anyray.remote
    def outer():
        return anyray.get(add.remote(20, 1)) * 2

    ref = outer.remote()
    assert _on_lease(ref)
    assert anyray.get(ref, timeout=WAIT) == 42
    mine = anyray.get_runtime_context().get_job_id()
    other = driver(one_cpu, """
        @anyray.remote
        def f():
            return 1
        print(anyray.get(f.remote(), timeout=60))
    """)  # another driver's task on the same worker in between
    assert other.returncode == 0, other.stderr
    wait_until(lambda: anyray.available_resources().get("CPU") == 1, "the leased CPU to come back")
    assert anyray.get(job_of_nested.remote(), timeout=WAIT) == (mine, mine)  # a leased task's, and its child's


def test_cancel_a_leased_task(one_cpu):
    ref = sleep.remote(30)
    assert _on_lease(ref)
    time.sleep(0.5)
    anyray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=WAIT)
    ref = sleep.remote(30)
    queued = sleep.remote(0.1)  # behind it on the same worker: it runs after the kill, through the node
    time.sleep(0.5)
    anyray.cancel(ref, force=True)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=WAIT)
    assert anyray.get(queued, timeout=WAIT) == 0.1


def test_the_switch_keeps_the_nodes_path(cluster_env):
    start_head(cluster_env, "--num-cpus", "1")
    env = dict(cluster_env, ANYRAY_TASK_LEASES="0")
    out = driver(env, """
        from anyray.current import current_runtime
        @anyray.remote
        def f(x):
            return x
        ref = f.remote(5)
        print(current_runtime().backend.scheduler.direct.waiting.get(ref._id) is None, anyray.get(ref, timeout=60))
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["True", "5"]


def test_a_wait_loop_over_leased_tasks_sees_each_once_even_when_a_worker_dies(one_cpu, tmp_path):
    marker = tmp_path / "first-run"

    @anyray.remote(max_retries=1)
    def value(i, path):
        if i == 5 and not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # the tasks behind it go through the node
        return i

    first = sleep.remote(0.5)
    assert _on_lease(first)
    refs = [first] + [value.remote(i, str(marker)) for i in range(40)]
    seen = []
    while refs:
        ready, refs = anyray.wait(refs, num_returns=1, timeout=WAIT)
        assert len(ready) == 1
        seen += anyray.get(ready, timeout=WAIT)
    assert sorted(seen[i] for i in range(len(seen)) if seen[i] != 0.5) == list(range(40))
    assert len(seen) == 41


def test_tasks_behind_a_long_one_wait_in_the_leases_backlog_when_the_socket_is_full(one_cpu):
    first = sleep.remote(1.0)
    payload = "x" * 20_000
    refs = [add.remote(payload, str(i)) for i in range(300)]  # ~6 MB: far more than the socket holds
    assert _on_lease(first) and _on_lease(refs[-1])
    assert anyray.get(refs, timeout=WAIT) == [payload + str(i) for i in range(300)]
    assert anyray.get(first, timeout=WAIT) == 1.0


def test_a_busy_driver_gives_its_lease_back_in_turn_so_another_drivers_task_runs(one_cpu):
    import threading

    stop = threading.Event()
    ended = []

    def busy():
        while not stop.is_set():
            anyray.get([add.remote(i, 1) for i in range(20)], timeout=WAIT)  # never idle for 20 ms
        ended.append(time.monotonic())

    thread = threading.Thread(target=busy)
    thread.start()
    try:
        time.sleep(0.5)
        other = driver(one_cpu, """
            @anyray.remote
            def f():
                return "ran"
            print(anyray.get(f.remote(), timeout=60))
        """)
        finished = time.monotonic()
    finally:
        stop.set()
        thread.join(WAIT)
    assert other.returncode == 0, other.stderr  # without turns its get times out: the lease is never idle
    assert other.stdout.strip().endswith("ran")
    assert ended and finished < ended[0]


def test_bursts_of_small_tasks_larger_than_the_worker_s_socket_buffer_all_complete(cluster_env):
    """Thousands of small tasks sent at once to leased workers: the driver sends only what a socket has room
    for and keeps the rest (a send that filled one blocked the driver while the worker blocked sending its
    answers back, and both waited forever: about one fresh driver in two)."""
    for _attempt in range(3):
        code = textwrap.dedent("""
            import anyray
            anyray.init(backend="cluster", num_cpus=2)

            class Functions:
                def __init__(self):
                    @anyray.remote
                    def noop(x=None):
                        return x
                    self.noop = noop

            noop = Functions().noop
            for burst in range(6):
                assert anyray.get([noop.remote() for _ in range(1000)], timeout=50) == [None] * 1000
            print("done", flush=True)
        """)
        result = subprocess.run([sys.executable, "-c", code], env=cluster_env, capture_output=True, text=True,
                                timeout=WAIT)  # a driver stuck in a send: TimeoutExpired
        assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]


# -- tasks with dependencies (lease_deps.py) ---------------------------------------------------


def _parked(ref) -> bool:
    """Whether ``ref``'s task waits in this driver for its dependencies."""
    return getattr(current_runtime().backend.scheduler.direct.waiting.get(ref._id), "parked", False)


def test_a_chain_of_dependent_tasks_waits_in_the_driver_and_runs_on_the_lease(one_cpu):
    head = sleep.remote(0.3)
    ref = add.remote(head, 1)
    assert _parked(ref)  # its dependency is still coming: it waits here, not at the node
    for _ in range(300):
        ref = add.remote(ref, 1)
        assert _on_lease(ref)
    assert anyray.get(ref, timeout=WAIT) == 301.3
    # dependencies here already (a result read, a small put), twice, and as keyword arguments
    small = anyray.put(10)
    ref = add.remote(a=small, b=anyray.get(add.remote(1, 2), timeout=WAIT))
    assert anyray.get(add.remote(ref, ref), timeout=WAIT) == 26
    assert anyray.get(add.remote(small, b=small), timeout=WAIT) == 20


def test_what_a_lease_cannot_carry_goes_through_the_node_with_the_same_results(one_cpu):
    import numpy as np

    @anyray.remote
    def big(n):
        return np.ones(n)

    @anyray.remote
    def total(a, b=0):
        return float(a.sum()) + b

    # a large result goes to the node: the task parked on it follows it there
    assert anyray.get(total.remote(big.remote(1_000_000)), timeout=WAIT) == 1_000_000
    assert anyray.get(total.remote(anyray.put(np.ones(1_000_000)), b=add.remote(1, 1)), timeout=WAIT) == 1_000_002
    # a reference inside an argument is passed on, not resolved: the node's path
    inner = add.remote(2, 3)

    @anyray.remote
    def first(refs):
        return anyray.get(refs[0])

    assert anyray.get(first.remote([inner]), timeout=WAIT) == 5


def test_a_failed_dependency_fails_the_tasks_that_wait_for_it_with_its_error(one_cpu):
    @anyray.remote(max_retries=0)
    def boom(delay):
        time.sleep(delay)
        raise ValueError("boom")

    ref = add.remote(add.remote(boom.remote(0.3), 1), 1)
    assert _parked(ref)
    with pytest.raises(ValueError, match="boom"):
        anyray.get(ref, timeout=WAIT)
    with pytest.raises(ValueError, match="boom"):
        anyray.get(add.remote(boom.remote(0), 1), timeout=WAIT)


def test_cancel_a_task_waiting_for_its_dependency(one_cpu):
    head = sleep.remote(1.0)
    middle = add.remote(head, 1)
    tail = add.remote(middle, 1)
    assert _parked(middle) and _parked(tail)
    anyray.cancel(middle)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(middle, timeout=WAIT)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(tail, timeout=WAIT)  # its dependency's error, as in Ray
    assert anyray.get(head, timeout=WAIT) == 1.0
    assert anyray.get(add.remote(head, 1), timeout=WAIT) == 2.0


def test_tasks_waiting_for_a_killed_workers_task_follow_it_through_the_node(one_cpu, tmp_path):
    marker = tmp_path / "first-run"

    @anyray.remote(max_retries=1)
    def dies_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGKILL)
        return 100

    ref = dies_once.remote(str(marker))
    for _ in range(50):
        ref = add.remote(ref, 1)
    assert _parked(ref)
    assert anyray.get(ref, timeout=WAIT) == 150

    @anyray.remote(max_retries=0)
    def dies():
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(exceptions.WorkerCrashedError):
        anyray.get(add.remote(add.remote(dies.remote(), 1), 1), timeout=WAIT)


def test_waiting_tasks_with_timeouts_threads_and_actor_results(one_cpu):
    import threading

    ref = add.remote(sleep.remote(1.5), 1)
    with pytest.raises(exceptions.GetTimeoutError):
        anyray.get(ref, timeout=0.2)
    ready, rest = anyray.wait([ref], timeout=0.1)
    assert not ready and rest == [ref]
    assert anyray.get(ref, timeout=WAIT) == 2.5

    @anyray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    counter = Counter.remote()
    assert anyray.get(add.remote(counter.incr.remote(), counter.incr.remote()), timeout=WAIT) == 3

    results = {}

    def chain(k):
        r = sleep.remote(0.2)
        for _ in range(40):
            r = add.remote(r, k)
        results[k] = anyray.get(r, timeout=WAIT)

    threads = [threading.Thread(target=chain, args=(k,)) for k in range(1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert results == {k: pytest.approx(0.2 + 40 * k) for k in range(1, 4)}


def test_list_tasks_shows_the_tasks_on_leases_and_those_waiting_for_dependencies(one_cpu):
    from anyray.util.state import list_tasks

    @anyray.remote
    def behind(a, b):
        return a + b

    @anyray.remote
    def waits(a, b):
        return a + b

    def states():
        rows = {row.name.split(".")[-1]: row.state for row in list_tasks(limit=10_000)}
        return {name: state for name, state in rows.items() if name in ("sleep", "behind", "waits")}

    head = sleep.remote(3)
    second = behind.remote(1, 2)
    third = waits.remote(head, 1)
    assert _on_lease(head) and _on_lease(second) and _parked(third)
    time.sleep(0.3)
    assert states() == {"sleep": "RUNNING", "behind": "SUBMITTED_TO_WORKER", "waits": "PENDING_ARGS_AVAIL"}
    assert anyray.get(third, timeout=WAIT) == 4
    wait_until(lambda: states() == {"sleep": "FINISHED", "behind": "FINISHED", "waits": "FINISHED"},
               "the finished tasks' records")


def test_cancel_of_a_leased_task_reaches_the_tasks_it_submitted(one_cpu, tmp_path):
    started, finished = tmp_path / "started", tmp_path / "finished"

    @anyray.remote(num_cpus=0)
    def child(started, finished):
        open(started, "w").close()
        time.sleep(3)
        open(finished, "w").close()

    @anyray.remote
    def parent(started, finished):
        return anyray.get(child.remote(started, finished))

    ref = parent.remote(str(started), str(finished))
    assert _on_lease(ref)
    wait_until(started.exists, "the child task to start")
    anyray.cancel(ref)  # recursive, as Ray's default
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=WAIT)
    time.sleep(4)
    assert not finished.exists()  # the child was interrupted too


def test_plain_tasks_spread_over_two_nodes_when_the_drivers_node_lends_no_more(cluster_env, monkeypatch):
    """The driver's node lends its one CPU, then answers that the other node has room: the driver sends the
    rest through its node, which forwards them there, instead of queueing them all on its one lease."""
    monkeypatch.delenv("ANYRAY_TASK_LEASES", raising=False)
    monkeypatch.delenv("ANYRAY_DIRECT_CALLS", raising=False)
    two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1"))
    anyray.init(backend="cluster", address="auto")
    try:
        wait_until(lambda: anyray.cluster_resources().get("CPU") == 2, "both nodes")

        @anyray.remote
        def where(seconds):
            time.sleep(seconds)
            return anyray.get_runtime_context().get_node_id()

        first = where.remote(0.3)
        assert _on_lease(first)
        nodes = anyray.get([first] + [where.remote(0.3) for _ in range(19)], timeout=WAIT)
        assert len(set(nodes)) == 2
        assert min(nodes.count(n) for n in set(nodes)) >= 5  # neither node ran nearly all of them
    finally:
        anyray.shutdown()
