"""Many calls queued behind a busy actor: ``.remote()`` returns at once however many calls wait.

Proves, as Ray 2.x behaves: while a sync actor runs a call that blocks (here until a file exists),
the caller submits thousands of calls with a small argument each and every ``.remote()`` returns
without waiting for the actor; once the blocking call ends, every call runs, in submission order.
A backend whose actor process does not read while it runs a call must not let its socket's
back-pressure reach the caller. The same holds for a threaded actor whose threads are all busy.
Among such queued calls, a cancelled one fails with ``TaskCancelledError`` and the others run; with
every handle gone, all of them still run before the actor ends; when the actor's process dies while
they wait, each fails with ``ActorDiedError`` (none waits forever).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time

import pytest

import anyray
from anyray.exceptions import ActorDiedError, TaskCancelledError

pytestmark = pytest.mark.usefixtures("anyray_session")

CALLS = 1000  # 1 MB of arguments: five times what a Unix socket buffers (Linux: 212,992 bytes)
ARG = b"a" * 1024
SUBMIT_DEADLINE = 240.0  # seconds the submissions may take (a few on a busy 2-core machine; Dask: tens)
RESULTS_DEADLINE = 180.0


@anyray.remote
class Ledger:
    def __init__(self):
        self._counter = itertools.count(1)  # next() is atomic: a threaded actor's calls count right

    def ready(self):
        return True

    def block_until(self, path, timeout=RESULTS_DEADLINE):
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} never appeared")
            time.sleep(0.01)
        return "unblocked"

    def record(self, payload):
        return next(self._counter), len(payload)

    def die_when(self, path, timeout=RESULTS_DEADLINE):
        self.block_until(path, timeout)
        os._exit(1)


def _submit_in_time(submit) -> list:
    """Run ``submit`` on a thread; its refs, or a failure if it is still inside ``.remote()`` at the deadline."""
    refs: list = []
    failure: list = []

    def run():
        try:
            refs.extend(submit())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            failure.append(exc)

    thread = threading.Thread(target=run, name="submitter", daemon=True)
    thread.start()
    thread.join(SUBMIT_DEADLINE)
    assert not thread.is_alive(), (f"submitting {CALLS} calls to a busy actor did not finish in "
                                   f"{SUBMIT_DEADLINE:.0f} s: the caller is blocked inside .remote()")
    if failure:
        raise failure[0]
    return refs


def _record_many(actor) -> list:
    return [actor.record.remote(ARG) for _ in range(CALLS)]


def _check_backpressure(actor, tmp_path, blockers: int) -> list:
    assert anyray.get(actor.ready.remote(), timeout=RESULTS_DEADLINE)
    path = str(tmp_path / "go")
    blocked = [actor.block_until.remote(path) for _ in range(blockers)]
    ready, _ = anyray.wait(blocked, timeout=0.2)
    assert not ready
    refs = _submit_in_time(lambda: _record_many(actor))
    with open(path, "w"):
        pass
    assert anyray.get(blocked, timeout=RESULTS_DEADLINE) == ["unblocked"] * blockers
    results = anyray.get(refs, timeout=RESULTS_DEADLINE)
    assert all(size == len(ARG) for _, size in results)
    return [count for count, _ in results]


def test_calls_queued_behind_a_busy_sync_actor_do_not_block_the_caller(tmp_path):
    counts = _check_backpressure(Ledger.remote(), tmp_path, blockers=1)
    assert counts == list(range(1, CALLS + 1))  # one at a time, in submission order


def test_calls_queued_behind_a_threaded_actor_with_every_thread_busy_do_not_block_the_caller(tmp_path):
    counts = _check_backpressure(Ledger.options(max_concurrency=2).remote(), tmp_path, blockers=2)
    assert sorted(counts) == list(range(1, CALLS + 1))


def test_a_call_cancelled_among_many_queued_behind_a_busy_actor_fails_and_the_others_run(tmp_path):
    actor = Ledger.remote()
    assert anyray.get(actor.ready.remote(), timeout=RESULTS_DEADLINE)
    path = str(tmp_path / "go")
    blocked = actor.block_until.remote(path)
    refs = _submit_in_time(lambda: _record_many(actor))
    cancelled = refs[CALLS - 10]
    anyray.cancel(cancelled)
    with open(path, "w"):
        pass
    assert anyray.get(blocked, timeout=RESULTS_DEADLINE) == "unblocked"
    with pytest.raises(TaskCancelledError):
        anyray.get(cancelled, timeout=RESULTS_DEADLINE)
    others = anyray.get([ref for ref in refs if ref is not cancelled], timeout=RESULTS_DEADLINE)
    counts = [count for count, _ in others]
    assert len(counts) == CALLS - 1 and counts == sorted(counts)  # in order (Ray may run the cancelled
    # call all the same, and drop its result: its count may be missing)


def test_calls_queued_behind_a_busy_actor_all_run_after_its_last_handle_goes(tmp_path):
    actor = Ledger.remote()
    assert anyray.get(actor.ready.remote(), timeout=RESULTS_DEADLINE)
    path = str(tmp_path / "go")
    blocked = actor.block_until.remote(path)
    refs = _submit_in_time(functools.partial(_record_many, actor))
    del actor  # the actor ends once the calls submitted before have run
    with open(path, "w"):
        pass
    assert anyray.get(blocked, timeout=RESULTS_DEADLINE) == "unblocked"
    assert [count for count, _ in anyray.get(refs, timeout=RESULTS_DEADLINE)] == list(range(1, CALLS + 1))


@pytest.mark.requires("processes")
def test_calls_queued_behind_a_busy_actor_fail_when_its_process_dies(tmp_path):
    actor = Ledger.remote()
    assert anyray.get(actor.ready.remote(), timeout=RESULTS_DEADLINE)
    path = str(tmp_path / "go")
    dying = actor.die_when.remote(path)
    refs = _submit_in_time(lambda: _record_many(actor))
    with open(path, "w"):
        pass
    for ref in [dying, refs[0], refs[CALLS // 2], refs[-1]]:
        with pytest.raises(ActorDiedError):
            anyray.get(ref, timeout=RESULTS_DEADLINE)
    ready, not_ready = anyray.wait(refs, num_returns=CALLS, timeout=RESULTS_DEADLINE)
    assert not not_ready  # every one of them failed: none waits forever
