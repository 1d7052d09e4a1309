"""How a node hands out work as results come (adapters/node/tasks.py, ``task_result``): a task that a
result makes ready runs on the worker that made that result when nothing else waits. That worker is
awake and reading; an idle one is asleep, and waking it costs a chain of tasks a thread wake-up per link
(a chain of 200 took 60 ms on two workers taking turns, 17 ms on one)."""

from __future__ import annotations

import os

import anyray


@anyray.remote
def link(pids):
    return [*pids, os.getpid()]


def test_a_chain_of_tasks_stays_on_the_worker_that_made_each_link():
    anyray.init(backend="multiprocess", num_cpus=2)
    try:
        anyray.get([link.remote([]) for _ in range(8)], timeout=60)  # both workers started and idle
        ref = link.remote([])
        for _ in range(49):
            ref = link.remote(ref)
        pids = anyray.get(ref, timeout=60)
        assert len(pids) == 50
        assert len(set(pids)) == 1, f"the chain ran on {len(set(pids))} workers"
    finally:
        anyray.shutdown()
