"""Failures of the multiprocess backend, caused by killing real processes with real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import anyray
from anyray.exceptions import ActorDiedError, TaskCancelledError, WorkerCrashedError

DEADLINE = 60


@pytest.fixture(scope="module", autouse=True)
def runtime():
    anyray.shutdown()  # a runtime another test module left (the conformance suite's shared one)
    anyray.init(backend="multiprocess", num_cpus=2)
    yield
    anyray.shutdown()


def wait_for(predicate, what, timeout=DEADLINE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def read_pid(path):
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def test_a_worker_killed_mid_task_is_retried_and_the_result_is_right(tmp_path):
    marker = tmp_path / "pid"

    @anyray.remote
    def once_slow(x):
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(DEADLINE)
        return x * 2

    ref = once_slow.remote(21)
    pid = wait_for(lambda: read_pid(marker), "the first attempt to start")
    os.kill(pid, signal.SIGKILL)
    assert anyray.get(ref, timeout=DEADLINE) == 42
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_worker_that_keeps_dying_raises_worker_crashed_after_max_retries(tmp_path):
    attempts = tmp_path / "attempts"

    @anyray.remote(max_retries=2)
    def dies():
        with open(attempts, "a") as f:
            f.write(f"{os.getpid()}\n")
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        anyray.get(dies.remote(), timeout=DEADLINE)
    assert len(attempts.read_text().split()) == 3  # the first run and two retries, each in a new process

    @anyray.remote
    def works():
        return "fine"
    assert anyray.get(works.remote(), timeout=DEADLINE) == "fine"


def test_max_retries_zero_fails_at_the_first_crash(tmp_path):
    @anyray.remote(max_retries=0)
    def dies():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(WorkerCrashedError):
        anyray.get(dies.remote(), timeout=DEADLINE)


@anyray.remote
class Slow:
    def __init__(self):
        self.calls = 0

    def pid(self):
        return os.getpid()

    def sleep(self, seconds):
        self.calls += 1
        time.sleep(seconds)
        return self.calls

    def count(self):
        self.calls += 1
        return self.calls


def test_killing_an_actor_process_fails_pending_and_later_calls():
    actor = Slow.remote()
    pid = anyray.get(actor.pid.remote(), timeout=DEADLINE)
    assert pid != os.getpid()
    pending = actor.sleep.remote(DEADLINE)
    time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="SIGKILL"):
        anyray.get(pending, timeout=DEADLINE)
    with pytest.raises(ActorDiedError):
        anyray.get(actor.count.remote(), timeout=DEADLINE)


def test_an_actor_with_max_restarts_comes_back_in_a_new_process_and_retries_calls_in_flight():
    actor = Slow.options(max_restarts=1, max_task_retries=1).remote()
    first = anyray.get(actor.pid.remote(), timeout=DEADLINE)
    anyray.get(actor.count.remote(), timeout=DEADLINE)
    in_flight = actor.sleep.remote(1.0)
    time.sleep(0.3)
    os.kill(first, signal.SIGKILL)
    assert anyray.get(in_flight, timeout=DEADLINE) == 1  # retried on the new instance, whose state is fresh
    second = anyray.get(actor.pid.remote(), timeout=DEADLINE)
    assert second != first
    os.kill(second, signal.SIGKILL)  # the one restart is used up
    with pytest.raises(ActorDiedError):
        wait_for(lambda: anyray.get(actor.count.remote(), timeout=DEADLINE) and False, "the actor to die", 30)


def test_without_max_task_retries_a_call_in_flight_fails_but_the_actor_restarts():
    actor = Slow.options(max_restarts=1).remote()
    pid = anyray.get(actor.pid.remote(), timeout=DEADLINE)
    in_flight = actor.sleep.remote(DEADLINE)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        anyray.get(in_flight, timeout=DEADLINE)
    assert anyray.get(actor.count.remote(), timeout=DEADLINE) == 1


def test_force_cancel_kills_the_worker_process(tmp_path):
    marker = tmp_path / "pid"

    @anyray.remote
    def stuck():
        marker.write_text(str(os.getpid()))
        time.sleep(DEADLINE)

    ref = stuck.remote()
    pid = wait_for(lambda: read_pid(marker), "the task to start")
    anyray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE,
             "the cancelled task's worker to die")


def test_cancel_removes_a_queued_task_that_never_runs(tmp_path):
    ran = tmp_path / "ran"

    @anyray.remote(num_cpus=2)
    def blocker():
        time.sleep(1.0)

    @anyray.remote(num_cpus=2)
    def queued():
        ran.write_text("yes")

    first = blocker.remote()
    second = queued.remote()
    anyray.cancel(second)
    with pytest.raises(TaskCancelledError):
        anyray.get(second, timeout=DEADLINE)
    anyray.get(first, timeout=DEADLINE)
    time.sleep(0.3)
    assert not ran.exists()


def test_max_calls_replaces_the_worker(tmp_path):
    @anyray.remote(max_calls=1)
    def pid():
        return os.getpid()

    first = anyray.get(pid.remote(), timeout=DEADLINE)
    second = anyray.get(pid.remote(), timeout=DEADLINE)
    assert first != second
    wait_for(lambda: not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE,
             "the retired worker to exit")


# --------------------------------------------------------------------------- the driver's end

DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import psutil
    import anyray

    anyray.init(backend="multiprocess", num_cpus=2)

    @anyray.remote
    def pid():
        return os.getpid()

    @anyray.remote
    def sleeper():
        time.sleep(600)

    @anyray.remote
    class Actor:
        def pid(self):
            return os.getpid()

    actor = Actor.remote()
    pids = {anyray.get(pid.remote()), anyray.get(actor.pid.remote())}
    running = sleeper.remote()
    time.sleep(0.3)
    pids |= {p.pid for p in psutil.Process().children(recursive=True)}
    session = anyray.runtime.current_runtime().backend.node.session.path
    print(" ".join(map(str, sorted(pids))), session, flush=True)
    how = sys.argv[1]
    if how == "shutdown":
        anyray.shutdown()
    elif how == "exception":
        raise RuntimeError("the driver fails")
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "ctrl-c":
        print("waiting", flush=True)
        anyray.get(running)
""")


def _start_driver(tmp_path, how):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline().split()
    assert line, proc.communicate(timeout=DEADLINE)
    return proc, [int(p) for p in line[:-1]], line[-1]


def _gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("how", ["shutdown", "exception", "sigkill", "ctrl-c"])
def test_no_worker_outlives_the_driver(tmp_path, how):
    proc, pids, session = _start_driver(tmp_path, how)
    try:
        assert len(pids) >= 3  # the fork server, a task worker (now running the sleeper), the actor
        if how == "ctrl-c":
            assert proc.stdout.readline().strip() == "waiting"
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
        if how == "ctrl-c":
            assert "KeyboardInterrupt" in err
        wait_for(lambda: all(_gone(p) for p in pids), f"every worker to exit after the driver's {how}", 30)
        wait_for(lambda: not os.path.exists(session), "the session directory to be removed", 30)
    finally:
        proc.kill()
        proc.communicate()


# --------------------------------------------------------------------------- races found in review


def test_cancelling_a_task_while_it_sends_large_messages_never_loses_the_connection():
    @anyray.remote
    def spam():
        refs = []
        while True:  # each put is a 60 KB message to the driver: a cancel lands mid-send often
            refs.append(anyray.put(b"x" * 60_000))
            if len(refs) > 50:
                refs.clear()

    for _ in range(8):
        ref = spam.remote()
        time.sleep(0.2)
        anyray.cancel(ref)
        with pytest.raises(TaskCancelledError):
            anyray.get(ref, timeout=DEADLINE)

    @anyray.remote
    def works():
        return "fine"
    assert anyray.get(works.remote(), timeout=DEADLINE) == "fine"


def test_a_cancel_is_not_swallowed_by_except_exception():
    @anyray.remote
    def stubborn(recorder_path):
        open(recorder_path, "w").close()
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001 - what user code often does
                pass
        return "finished"

    import tempfile
    path = os.path.join(tempfile.mkdtemp(), "started")
    ref = stubborn.remote(path)
    wait_for(lambda: os.path.exists(path), "the task to start")
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)


def test_two_driver_threads_waiting_on_one_actor_do_not_block_each_other():
    import threading

    @anyray.remote(max_concurrency=2)
    class Gate:
        def __init__(self):
            self.event = threading.Event()

        def wait(self):
            return self.event.wait(DEADLINE)

        def ping(self):
            return "pong"

        def open(self):
            self.event.set()

    gate = Gate.remote()
    anyray.get(gate.ping.remote(), timeout=DEADLINE)
    out = {}
    waiter = threading.Thread(target=lambda: out.setdefault("wait", anyray.get(gate.wait.remote())), daemon=True)
    waiter.start()
    time.sleep(0.3)
    started = time.monotonic()
    assert anyray.get(gate.ping.remote(), timeout=DEADLINE) == "pong"
    assert time.monotonic() - started < DEADLINE / 2
    gate.open.remote()
    waiter.join(DEADLINE)
    assert out == {"wait": True}


def test_get_with_timeout_zero_inside_a_task_returns_a_ready_object():
    ready = anyray.put(41)
    anyray.wait([ready])

    @anyray.remote
    def peek(refs):
        return anyray.get(refs[0], timeout=0)

    assert anyray.get(peek.remote([ready]), timeout=DEADLINE) == 41
