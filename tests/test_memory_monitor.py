"""The node's memory monitor, with real worker processes: the threshold is set just above the memory in use
now, and a task that then holds 3 GiB more passes it by 1.5 GiB, far more than the machine's other users move
it (never near the machine's limit)."""

from __future__ import annotations

import logging
import threading
import time

import pytest

import anyray
from anyray.adapters.node import memory_monitor
from anyray.exceptions import OutOfMemoryError

HOG = 3 << 30  # 3 GiB, written (so really resident); the threshold sits half of it above the use now
WAIT = 120.0


@pytest.fixture
def low_threshold(monkeypatch):
    used, total = memory_monitor.memory_usage()
    if total - used < 4 * HOG:
        pytest.skip("this machine has too little free memory to pass a threshold safely")
    monkeypatch.setenv(memory_monitor.THRESHOLD_ENV, f"{(used + HOG // 2) / total:.6f}")
    monkeypatch.setenv(memory_monitor.REFRESH_ENV, "100")
    yield
    if anyray.is_initialized():
        anyray.shutdown()


def hog(path: str, hog_on_attempts: int):
    with open(path, "a") as f:
        f.write("attempt\n")
    with open(path) as f:
        attempt = len(f.read().splitlines())
    if attempt > hog_on_attempts:
        return f"done on attempt {attempt}"
    held = b"\x01" * HOG
    time.sleep(WAIT)
    return len(held)


def test_a_task_that_may_not_be_retried_fails_with_out_of_memory_error(low_threshold, tmp_path):
    anyray.init("multiprocess", num_cpus=2)
    ref = anyray.remote(max_retries=0)(hog).remote(str(tmp_path / "a"), 99)
    with pytest.raises(OutOfMemoryError, match=memory_monitor.FIRST_LINE):
        anyray.get(ref, timeout=WAIT)
    assert (tmp_path / "a").read_text().count("attempt") == 1


def test_a_retriable_task_runs_again_until_its_memory_retries_are_spent(low_threshold, tmp_path, monkeypatch):
    monkeypatch.setenv(memory_monitor.OOM_RETRIES_ENV, "2")
    anyray.init("multiprocess", num_cpus=2)
    task = anyray.remote(max_retries=1)(hog)  # memory kills are counted apart from max_retries
    assert anyray.get(task.remote(str(tmp_path / "b"), 2), timeout=WAIT) == "done on attempt 3"
    with pytest.raises(OutOfMemoryError, match="past the memory usage threshold"):
        anyray.get(task.remote(str(tmp_path / "c"), 99), timeout=WAIT)
    assert (tmp_path / "c").read_text().count("attempt") == 3  # the first run and its 2 memory retries


def test_a_retriable_task_is_killed_before_an_older_one_that_may_not_be_retried(low_threshold, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv(memory_monitor.OOM_RETRIES_ENV, "1")
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "0")  # back at once: no backoff gap for the older one to fill
    anyray.init("multiprocess", num_cpus=2)
    older = anyray.remote(max_retries=0)(hog).remote(str(tmp_path / "older"), 99)  # it holds the memory
    deadline = time.monotonic() + WAIT
    while not (tmp_path / "older").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    newer = anyray.remote(max_retries=3)(time.sleep).remote(WAIT)  # holds nothing, but may be retried
    with pytest.raises(OutOfMemoryError, match="most recently started retriable one"):
        anyray.get(newer, timeout=WAIT)  # killed twice (its one memory retry) while the older one ran on
    with pytest.raises(OutOfMemoryError, match="most recently started one"):  # then the older one
        anyray.get(older, timeout=WAIT)
    assert (tmp_path / "older").read_text().count("attempt") == 1


def stamped_hog(path: str, hog_on_attempts: int):
    with open(path, "a") as f:
        f.write(f"{time.monotonic()}\n")
    return hog(path + ".attempts", hog_on_attempts)


def test_a_task_killed_for_memory_runs_again_after_a_backoff_that_doubles(low_threshold, tmp_path, monkeypatch):
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "1500")
    anyray.init("multiprocess", num_cpus=2)
    ref = anyray.remote(max_retries=1)(stamped_hog).remote(str(tmp_path / "t"), 2)
    assert anyray.get(ref, timeout=WAIT) == "done on attempt 3"
    starts = [float(line) for line in (tmp_path / "t").read_text().split()]
    assert len(starts) == 3
    assert starts[1] - starts[0] >= 1.5  # the first memory retry waits the base delay,
    assert starts[2] - starts[1] >= 3.0  # the second twice that


def test_the_memory_retry_delay_doubles_up_to_a_minute_and_is_checked(monkeypatch):
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "1000")
    assert [memory_monitor.retry_delay(k) for k in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 60.0]
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "soon")
    with pytest.raises(ValueError, match="RAY_task_oom_retry_delay_base_ms"):
        memory_monitor.retry_delay(1)


class Holder:
    def hold(self):
        held = b"\x01" * HOG
        time.sleep(WAIT)
        return len(held)

    def restarted(self):
        return anyray.get_runtime_context().was_current_actor_reconstructed


def test_an_actor_killed_for_memory_restarts_within_max_restarts_then_its_calls_fail(low_threshold):
    anyray.init("multiprocess", num_cpus=2)
    actor = anyray.remote(max_restarts=1)(Holder).remote()
    assert anyray.get(actor.restarted.remote(), timeout=WAIT) is False
    with pytest.raises(OutOfMemoryError, match="Actor was killed due to the node running low on memory"):
        anyray.get(actor.hold.remote(), timeout=WAIT)  # the call in flight fails; the actor restarts
    assert anyray.get(actor.restarted.remote(), timeout=WAIT) is True
    with pytest.raises(OutOfMemoryError, match="the most recently started one"):  # no restart left now
        anyray.get(actor.hold.remote(), timeout=WAIT)
    with pytest.raises(OutOfMemoryError, match="Holder"):  # and it is dead: every call fails with the cause
        anyray.get(actor.restarted.remote(), timeout=WAIT)



def sleeper(path: str):
    with open(path, "a") as f:
        f.write("attempt\n")
    time.sleep(WAIT)


def caller_of_one(path: str):
    return anyray.get(anyray.remote(max_retries=3)(sleeper).options(name="theirs").remote(path))


def test_retriable_tasks_of_the_caller_running_the_most_go_first(low_threshold, tmp_path, monkeypatch):
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "60000")  # a killed task stays away while the test looks
    monkeypatch.setenv(memory_monitor.OOM_RETRIES_ENV, "1")
    kills = []

    class Kills(logging.Handler):
        def emit(self, record):
            kills.append(record.getMessage().split("where the task ")[1].split()[0])

    handler = Kills(logging.WARNING)
    memory_monitor.log.addHandler(handler)
    try:
        anyray.init("multiprocess", num_cpus=5)

        def started(name):
            deadline = time.monotonic() + WAIT
            while not (tmp_path / name).exists():
                assert time.monotonic() < deadline, name
                time.sleep(0.02)

        hog_ref = anyray.remote(max_retries=0)(hog).options(name="hog").remote(str(tmp_path / "hog"), 99)
        started("hog")
        mine = []
        for i in range(2):  # the driver's two retriable tasks
            mine.append(anyray.remote(max_retries=3)(sleeper).options(name=f"mine{i}").remote(str(tmp_path / f"{i}")))
            started(str(i))
        caller = anyray.remote(max_retries=0)(caller_of_one).options(name="caller").remote(str(tmp_path / "y"))
        started("y")  # the newest task is another caller's only one
        with pytest.raises(OutOfMemoryError):
            anyray.get(hog_ref, timeout=WAIT)  # all the others went first
        # the driver's newest before the newest of all; then the callers run one each: the newest first;
        # then the tasks that may not be retried, the newest first
        assert kills == ["mine1", "theirs", "mine0", "caller", "hog"]
        del mine, caller
    finally:
        memory_monitor.log.removeHandler(handler)


def test_a_task_waiting_out_its_memory_backoff_as_the_node_shuts_down_ends_quietly(low_threshold, tmp_path,
                                                                                   monkeypatch):
    """Its backoff's thread wakes after the node closed: it neither queues the task nor raises."""
    monkeypatch.setenv(memory_monitor.DELAY_ENV, "3000")
    raised = []
    monkeypatch.setattr(threading, "excepthook", raised.append)
    anyray.init("multiprocess", num_cpus=2)
    anyray.remote(max_retries=1)(hog).remote(str(tmp_path / "d"), 99)
    deadline = time.monotonic() + WAIT
    while not [t for t in threading.enumerate() if t.name == "anyray-oom-backoff"]:  # killed: its backoff began
        assert time.monotonic() < deadline, "the task was not killed for memory"
        time.sleep(0.02)
    anyray.shutdown()
    for thread in [t for t in threading.enumerate() if t.name == "anyray-oom-backoff"]:
        thread.join(WAIT)
    assert [f"{args.exc_type.__name__}: {args.exc_value}" for args in raised] == []
    attempts = tmp_path / "d"  # (killed before it wrote its line if others' memory passed the threshold first)
    assert not attempts.exists() or attempts.read_text().count("attempt") == 1  # it never ran again
