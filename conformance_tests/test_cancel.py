"""Cancellation: queued tasks never run, running ones are interrupted, finished ones are left alone.

Proves that ``cancel`` of a task waiting for its arguments or for resources
makes its ref raise ``TaskCancelledError`` without the task ever starting;
that a running Python loop is interrupted (capability ``interrupt_cancel``)
and a task stuck outside Python stopped with ``force=True`` (capability
``force_cancel``); that ``recursive=True`` cancels the tasks the cancelled
task submitted and ``recursive=False`` leaves them running; and that the
runtime keeps working afterwards.
"""

import time

import pytest

import anyray
from anyray.conformance.helpers import (
    DEADLINE,
    Recorder,
    assert_runtime_works,
    echo,
    recorded,
    wait_for_signal,
    wait_until,
)
from anyray.exceptions import TaskCancelledError

pytestmark = pytest.mark.usefixtures("anyray_session")


def test_cancel_a_task_waiting_for_its_arguments(signal):
    recorder = Recorder.remote()

    @anyray.remote
    def never(_, recorder):
        anyray.get(recorder.record.remote("ran"))

    ref = never.remote(wait_for_signal.remote(signal), recorder)
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    signal.send.remote()
    assert_runtime_works()
    assert anyray.get(recorder.entries.remote()) == []


def test_cancel_a_task_waiting_for_resources(signal):
    recorder = Recorder.remote()

    @anyray.remote(resources={"Custom": 2})
    def hold(signal, recorder):
        anyray.get(recorder.record.remote("holding"))
        return anyray.get(signal.wait.remote())

    @anyray.remote(resources={"Custom": 1})
    def queued(recorder):
        anyray.get(recorder.record.remote("queued ran"))

    holder = hold.remote(signal, recorder)
    recorded(recorder, "holding")
    ref = queued.remote(recorder)
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    signal.send.remote()
    assert anyray.get(holder, timeout=DEADLINE) is True
    assert_runtime_works()
    assert anyray.get(recorder.entries.remote()) == ["holding"]


def test_cancel_a_finished_task_keeps_its_value():
    ref = echo.remote("kept")
    assert anyray.get(ref) == "kept"
    anyray.cancel(ref)
    assert anyray.get(ref) == "kept"


def test_a_task_depending_on_a_cancelled_task_fails(signal):
    @anyray.remote
    def plus_one(x):
        return x + 1

    upstream = plus_one.remote(wait_for_signal.remote(signal, 1))
    downstream = plus_one.remote(upstream)
    anyray.cancel(upstream)
    with pytest.raises(TaskCancelledError):
        anyray.get(downstream, timeout=DEADLINE)


@pytest.mark.requires("interrupt_cancel")
def test_cancel_interrupts_a_running_python_loop():
    recorder = Recorder.remote()

    @anyray.remote
    def spin(recorder, limit):
        anyray.get(recorder.record.remote("spinning"))
        deadline = time.monotonic() + limit
        n = 0
        while time.monotonic() < deadline:
            n += 1
        anyray.get(recorder.record.remote("loop ended"))
        return n

    ref = spin.remote(recorder, DEADLINE)
    recorded(recorder, "spinning")
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    assert_runtime_works()
    assert "loop ended" not in anyray.get(recorder.entries.remote())


@pytest.mark.requires("force_cancel")
def test_force_cancel_stops_a_task_outside_python():
    recorder = Recorder.remote()

    @anyray.remote
    def stuck(recorder, limit):
        anyray.get(recorder.record.remote("stuck"))
        time.sleep(limit)
        anyray.get(recorder.record.remote("woke up"))

    ref = stuck.remote(recorder, DEADLINE)
    recorded(recorder, "stuck")
    anyray.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    assert_runtime_works()
    assert "woke up" not in anyray.get(recorder.entries.remote())


@pytest.mark.requires("interrupt_cancel")
@pytest.mark.parametrize("recursive", [True, False])
def test_cancel_recursive_decides_whether_the_tasks_it_submitted_go_too(signal, recursive):
    recorder = Recorder.remote()

    @anyray.remote
    def plus_one(x):
        return x + 1

    @anyray.remote
    def parent(signal, recorder):
        child = plus_one.remote(wait_for_signal.remote(signal, 1))
        anyray.get(recorder.record.remote([child]))  # in a list: the driver gets the ref itself
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:  # running Python, which cancel() interrupts
            time.sleep(0.01)
        return "parent ended"

    ref = parent.remote(signal, recorder)
    wait_until(lambda: anyray.get(recorder.entries.remote()), what="the child submitted")
    [[child]] = anyray.get(recorder.entries.remote())
    anyray.cancel(ref, recursive=recursive)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    if recursive:  # Ray's default: the tasks the cancelled task submitted are cancelled with it
        with pytest.raises(TaskCancelledError):
            anyray.get(child, timeout=DEADLINE)
    else:
        ready, _ = anyray.wait([child], timeout=0.5)
        assert ready == []  # still waiting for its argument, not cancelled
        signal.send.remote()
        assert anyray.get(child, timeout=DEADLINE) == 2
    assert_runtime_works()
