"""``ray.util`` helpers: ``ActorPool``, ``queue.Queue``, ``multiprocessing.Pool``, the joblib backend,
``inspect_serializability``.

Proves, as Ray 2.x behaves: an ActorPool returns results in submission order (``get_next``, ``map``) or
as they finish, queues submissions while every actor is busy, and raises ``StopIteration`` when nothing
is pending, ``TimeoutError`` past a timeout (giving the call up with ``ignore_if_timedout``), and
``ValueError`` for a pushed actor it already has; a Queue is first-in first-out, blocks ``get``/``put``
until an item/room comes (or raises ``Empty``/``Full`` at once or past a timeout), adds and removes
batches all or nothing, works from asyncio, tasks and actors, and can be shut down; a
multiprocessing Pool maps (ordered, lazily, unordered, starred), applies, raises a call's exception,
times out ``AsyncResult.get`` with ``multiprocessing.TimeoutError``, runs its initializer in each
process, refuses work once closed; joblib's ``Parallel`` runs on the ``"ray"`` backend;
``inspect_serializability`` names the lock a lambda captures.
"""

from __future__ import annotations

import asyncio
import io
import multiprocessing
import queue as stdlib_queue
import subprocess
import sys
import threading

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Counter, echo, wait_for_signal
from anyray.util import ActorPool, as_completed, inspect_serializability, map_unordered
from anyray.util.multiprocessing import Pool
from anyray.util.queue import Empty, Full, Queue

pytestmark = pytest.mark.usefixtures("anyray_session")


@anyray.remote
class Doubler:
    def double(self, value):
        return 2 * value

    def double_after(self, signal, value):
        anyray.get(signal.wait.remote())
        return 2 * value


def double(actor, value):
    return actor.double.remote(value)


# -- ActorPool -------------------------------------------------------------------------------------


def test_actor_pool_map_gives_results_in_input_order_and_map_unordered_gives_all_of_them():
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(double, range(8))) == [2 * i for i in range(8)]
    assert sorted(pool.map_unordered(double, range(8))) == [2 * i for i in range(8)]
    assert not pool.has_next()


def test_actor_pool_queues_submissions_while_every_actor_is_busy(signal):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda actor, v: actor.double_after.remote(signal, v), 1)
    pool.submit(double, 2)  # no idle actor: queued until the first call's result is taken
    assert pool.has_next() and not pool.has_free() and pool.pop_idle() is None
    signal.send.remote()
    assert pool.get_next(timeout=DEADLINE) == 2
    assert pool.get_next(timeout=DEADLINE) == 4
    assert pool.has_free()


def test_actor_pool_get_next_with_nothing_pending_raises_stop_iteration():
    pool = ActorPool([Doubler.remote()])
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next()
    with pytest.raises(StopIteration, match="No more results to get"):
        pool.get_next_unordered()


def test_actor_pool_get_next_times_out_and_can_give_the_call_up(signal):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda actor, v: actor.double_after.remote(signal, v), 1)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.1)
    assert pool.has_next()  # still pending: a later get_next may take it
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.1)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0.1, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()  # given up: the actor is back in the pool


def test_actor_pool_get_next_after_out_of_order_unordered_results_raises(signal):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda actor, v: actor.double_after.remote(signal, v), 1)
    pool.submit(double, 2)
    assert pool.get_next_unordered(timeout=DEADLINE) == 4  # the second call: the first is blocked
    with pytest.raises(ValueError, match="get_next_unordered"):
        pool.get_next()
    signal.send.remote()
    assert pool.get_next_unordered(timeout=DEADLINE) == 2


def test_actor_pool_push_and_pop_idle():
    first, second = Doubler.remote(), Doubler.remote()
    pool = ActorPool([first])
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(first)
    pool.push(second)
    taken = {pool.pop_idle(), pool.pop_idle()}
    assert taken == {first, second}
    assert pool.pop_idle() is None and not pool.has_free()
    pool.push(first)
    assert list(pool.map(double, [5])) == [10]


# -- queue.Queue -----------------------------------------------------------------------------------


def test_queue_is_first_in_first_out_and_reports_its_size():
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.size() == 0
    for item in ("a", "b", "c"):
        q.put(item)
    assert q.full() and q.qsize() == 3 and len(q) == 3
    assert [q.get(), q.get_nowait(), q.get(block=False)] == ["a", "b", "c"]
    assert q.empty()


def test_queue_raises_empty_and_full_at_once_or_past_a_timeout():
    q = Queue(maxsize=1)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.1)
    q.put_nowait(1)
    with pytest.raises(Full):
        q.put_nowait(2)
    with pytest.raises(Full):
        q.put(2, timeout=0.1)
    with pytest.raises(stdlib_queue.Full):  # Ray's Empty/Full are the standard library's
        q.put(2, block=False)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    assert q.get() == 1


def test_queue_batches_are_all_or_nothing():
    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.qsize() == 2
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    with pytest.raises(TypeError, match="Iterable"):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError, match="int"):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError, match="nonnegative"):
        q.get_nowait_batch(-1)


@anyray.remote
def produce(q, items):
    for item in items:
        q.put(item)
    return len(items)


@anyray.remote
def consume(q, count):
    return [q.get(timeout=DEADLINE) for _ in range(count)]


@anyray.remote
class QueueUser:
    def __init__(self, q):
        self.q = q

    def put_all(self, items):
        for item in items:
            self.q.put(item)

    async def get_async(self):
        return await self.q.get_async(timeout=DEADLINE)


def test_queue_blocking_get_waits_for_a_put_from_a_task():
    q = Queue(maxsize=2)  # smaller than the items: the producer blocks on a full queue too
    done = produce.remote(q, list(range(6)))
    assert [q.get(timeout=DEADLINE) for _ in range(6)] == list(range(6))
    assert anyray.get(done, timeout=DEADLINE) == 6


def test_queue_is_shared_by_tasks_and_actors():
    q = Queue()
    user = QueueUser.remote(q)
    taken = consume.remote(q, 3)
    anyray.get(user.put_all.remote(["x", "y", "z"]), timeout=DEADLINE)
    assert anyray.get(taken, timeout=DEADLINE) == ["x", "y", "z"]
    pending = user.get_async.remote()
    q.put("from the driver")
    assert anyray.get(pending, timeout=DEADLINE) == "from the driver"


def test_queue_put_async_and_get_async_are_awaitable():
    q = Queue(maxsize=1)

    async def main():
        await q.put_async("first")
        with pytest.raises(Full):
            await q.put_async("second", block=False)
        with pytest.raises(Full):
            await q.put_async("second", timeout=0.1)
        value = await q.get_async()
        with pytest.raises(Empty):
            await q.get_async(timeout=0.1)
        return value

    assert asyncio.run(main()) == "first"


def test_queue_actor_options_and_shutdown():
    name = f"queue-{id(object())}"
    q = Queue(actor_options={"name": name})
    q.put(1)
    assert anyray.get(anyray.get_actor(name).qsize.remote()) == 1
    q.shutdown()
    assert q.actor is None
    Queue().shutdown(force=True)


# -- multiprocessing.Pool --------------------------------------------------------------------------


def square(x):
    return x * x


def fail_on_three(x):
    if x == 3:
        raise ValueError("three is not allowed")
    return x


def wait_then(signal, value):
    anyray.get(signal.wait.remote())
    return value


def count_start(counter):
    anyray.get(counter.incr.remote())


def test_pool_maps_starmaps_and_applies():
    with Pool(processes=2) as pool:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.map(square, range(7), chunksize=3) == [x * x for x in range(7)]
        assert pool.starmap(pow, [(2, 3), (3, 2), (5, 0)]) == [8, 9, 1]
        assert list(pool.imap(square, range(6))) == [x * x for x in range(6)]
        assert sorted(pool.imap_unordered(square, range(6), chunksize=2)) == sorted(x * x for x in range(6))
        assert pool.apply(square, (7,)) == 49
        assert pool.apply_async(divmod, (7, 2)).get(timeout=DEADLINE) == (3, 1)
        assert pool.map_async(square, [1, 2]).get(timeout=DEADLINE) == [1, 4]
        assert pool.starmap_async(pow, [(2, 2)]).get(timeout=DEADLINE) == [4]


def test_pool_raises_the_exception_a_call_raised():
    with Pool(processes=2) as pool:
        with pytest.raises(ValueError, match="three is not allowed"):
            pool.map(fail_on_three, range(6))
        with pytest.raises(ValueError, match="three is not allowed"):
            pool.apply(fail_on_three, (3,))
        result = pool.map_async(fail_on_three, range(6))
        result.wait(DEADLINE)
        assert result.ready() and not result.successful()


def test_pool_async_result_times_out_then_gives_the_value_and_calls_back(signal):
    got = []
    done = threading.Event()
    with Pool(processes=2) as pool:
        result = pool.apply_async(wait_then, (signal, "late"), callback=lambda v: (got.append(v), done.set()))
        with pytest.raises(multiprocessing.TimeoutError):
            result.get(timeout=0.1)
        assert not result.ready()
        with pytest.raises(ValueError, match="not ready"):
            result.successful()
        signal.send.remote()
        assert result.get(timeout=DEADLINE) == "late"
        assert result.successful()
        assert done.wait(DEADLINE) and got == ["late"]


def test_pool_runs_the_initializer_in_each_process_and_replaces_them_after_maxtasksperchild():
    counter = Counter.remote()
    with Pool(processes=2, initializer=count_start, initargs=(counter,)) as pool:
        assert pool.map(square, range(4)) == [0, 1, 4, 9]
    assert anyray.get(counter.get.remote()) == 2
    counter = Counter.remote()
    with Pool(processes=2, initializer=count_start, initargs=(counter,), maxtasksperchild=1) as pool:
        assert pool.map(square, range(6), chunksize=1) == [x * x for x in range(6)]
    assert anyray.get(counter.get.remote()) >= 6  # each batch ran on a fresh process


def test_pool_refuses_work_once_closed_and_join_needs_close():
    pool = Pool(processes=2)
    with pytest.raises(ValueError, match="Pool is still running"):
        pool.join()
    assert pool.map(square, [3]) == [9]
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply_async(square, (1,))
    pool.join()


def test_pool_terminate_drops_the_work_not_done(signal):
    pool = Pool(processes=1)
    pool.apply_async(wait_then, (signal, "running"))
    queued = pool.apply_async(square, (2,))  # behind the blocked call on the pool's one process
    pool.terminate()
    with pytest.raises(anyray.exceptions.RayActorError):
        queued.get(timeout=DEADLINE)
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])


def test_pool_starts_a_runtime_when_none_is_up(isolated_runtime, backend_name, monkeypatch):
    monkeypatch.setenv("ANYRAY_BACKEND", backend_name)
    assert not anyray.is_initialized()
    # ray_address is the cluster to join (None: a new runtime, with processes CPUs), as in Ray
    with Pool(processes=2, ray_address=isolated_runtime.get("address")) as pool:
        assert anyray.is_initialized()
        assert pool.map(square, range(3)) == [0, 1, 4]


def test_pool_size_must_be_positive_and_fit_the_cluster():
    with pytest.raises(ValueError, match="must be >0"):
        Pool(processes=0)
    cpus = int(anyray.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match="only .* CPUs"):
        Pool(processes=cpus + 1000)


# -- joblib ----------------------------------------------------------------------------------------


def test_joblib_parallel_runs_on_the_ray_backend():
    joblib = pytest.importorskip("joblib")
    from anyray.util.joblib import register_ray

    register_ray()
    with joblib.parallel_backend("ray"):
        results = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(i) for i in range(12))
        assert results == [i * i for i in range(12)]
        with pytest.raises(ValueError, match="three is not allowed"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(fail_on_three)(i) for i in range(5))
        # n_jobs=-1: one process per CPU of the cluster
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(square)(i) for i in range(3)) == [0, 1, 4]
    with joblib.parallel_backend("ray", n_jobs=2, ray_remote_args={"num_cpus": 0}):
        assert joblib.Parallel()(joblib.delayed(pow)(2, i) for i in range(4)) == [1, 2, 4, 8]


# -- as_completed, map_unordered -------------------------------------------------------------------


def test_as_completed_yields_results_as_they_finish(signal):
    refs = [wait_for_signal.remote(signal, "late"), *(echo.remote(i) for i in range(3))]
    results = as_completed(refs, chunk_size=1)
    assert sorted(next(results) for _ in range(3)) == [0, 1, 2]  # the blocked task does not hold them back
    signal.send.remote()
    assert list(results) == ["late"]
    refs = [echo.remote(i) for i in range(5)]
    assert set(as_completed(refs, chunk_size=2, yield_obj_refs=True)) == set(refs)
    with pytest.raises(ValueError, match="chunk_size"):
        list(as_completed(refs, chunk_size=0))
    with pytest.raises(ValueError, match="num_returns"):
        list(as_completed(refs, num_returns=2))


def test_map_unordered_applies_a_remote_function_with_backpressure():
    assert sorted(map_unordered(echo, range(10), backpressure_size=3, chunk_size=2)) == list(range(10))
    assert sorted(map_unordered(echo, range(4), backpressure_size=None)) == list(range(4))
    with pytest.raises(ValueError, match="backpressure_size"):
        list(map_unordered(echo, range(4), backpressure_size=0))


# -- inspect_serializability -----------------------------------------------------------------------


def test_inspect_serializability_names_the_lock_a_lambda_captures():
    lock = threading.Lock()
    report = io.StringIO()
    ok, failures = inspect_serializability(lambda: lock, name="uses_lock", print_file=report)
    assert not ok
    [failure] = failures
    assert failure.obj is lock and failure.path[-1] == "lock"
    assert "was found to be non-serializable" in report.getvalue() and "lock" in report.getvalue()
    assert inspect_serializability(square, print_file=io.StringIO()) == (True, set())


def test_importing_util_loads_no_helper_until_used():
    code = ("import sys, anyray.util as u; "
            "print(sorted(m for m in ('joblib', 'anyray.util.queue', 'anyray.util.multiprocessing') "
            "if m in sys.modules)); u.ActorPool; print('anyray.util.actor_pool' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=DEADLINE, check=True)
    assert out.stdout.split() == ["[]", "True"]
