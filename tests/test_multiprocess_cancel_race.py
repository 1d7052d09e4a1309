"""A cancel that reaches a worker before its task starts there: a regression test run as real scripts.

The node sends CANCEL and then SIGINT. When both landed before the worker had
made the task current, the signal found nothing to interrupt and the message
lay unread while the task ran, so ``get`` of a cancelled ``sleep(10e6)`` hung
(3 runs in 8 of the program below, which falls off its end with tasks running).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

RUNS = 12
RUN_TIMEOUT = 90  # seconds one run may take; the runs that hung never ended

PROGRAM = textwrap.dedent("""
    import time

    import anyray as ray
    from anyray.exceptions import TaskCancelledError

    ray.init(backend="multiprocess", num_cpus=2)

    @ray.remote
    def sleep(seconds):
        time.sleep(seconds)
        return seconds

    @ray.remote
    def one():
        return 1

    @ray.remote
    def plus(x):
        return x + 1

    @ray.remote(num_returns=3)
    def three():
        return 1, 2, 3

    @ray.remote(num_returns=3)
    def counted():
        for i in range(3):
            yield i

    for _ in range(4):
        sleep.remote(0.3)  # never waited for
    assert ray.get(plus.remote(one.remote())) == 2
    ready, _ = ray.wait([sleep.remote(0.01), sleep.remote(0.3)], num_returns=1)
    assert len(ready) == 1
    assert ray.get(list(three.remote())) == [1, 2, 3]
    assert ray.get(list(counted.remote())) == [0, 1, 2]
    for attempt in range(8):  # the cancel races the task's start on its worker
        forever = sleep.remote(10e6)
        ray.cancel(forever)
        try:
            ray.get(forever)
        except TaskCancelledError:
            pass
        else:
            raise AssertionError("a cancelled task returned")
    print("done", flush=True)
""")


@pytest.mark.parametrize("run", range(RUNS))
def test_a_cancel_right_after_submit_ends_the_get(tmp_path, run):
    script = tmp_path / "cancel_race.py"
    script.write_text(PROGRAM)
    try:
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"run {run} hung (a cancelled task's get never ended); output:\n"
                             f"{exc.stdout}\n{exc.stderr}") from None
    assert done.returncode == 0 and "done" in done.stdout, done.stdout + done.stderr
