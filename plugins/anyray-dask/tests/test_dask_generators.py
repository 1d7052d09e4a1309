"""Generators on Dask, beyond the conformance suite: what streams through a Dask queue and how it ends.

The conformance suite (``conformance_tests/test_generators.py``) holds Ray's
semantics; these tests hold what the plugin adds or must not leak: values too
large to travel inside the queue, refs to streamed values passed on, a running
generator cancelled at its next yield (Dask cannot interrupt a task), a dropped
generator's producer ending, and the queues released on the scheduler.
"""

from __future__ import annotations

import os
import time

import pytest

import anyray
from anyray.backend_kit import current_runtime
from anyray.exceptions import TaskCancelledError

pytest.importorskip("distributed")

DEADLINE = 60


@pytest.fixture(scope="module")
def session():
    if anyray.is_initialized():
        anyray.shutdown()
    anyray.init(backend="dask", num_cpus=2)
    yield
    anyray.shutdown()


def _lines(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def _wait_for(predicate, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(0.05)


def _stream_queues() -> list[str]:
    """The stream queues the Dask scheduler holds now."""
    from anyray_dask.generators import QUEUE_PREFIX

    def names(dask_scheduler=None):
        return [name for name in dask_scheduler.extensions["queues"].queues if str(name).startswith(QUEUE_PREFIX)]

    return current_runtime().backend.client.run_on_scheduler(names)


def test_large_values_stream_as_dask_data_and_their_refs_pass_to_tasks(session):
    import numpy as np

    @anyray.remote
    def blocks(n):
        for i in range(n):
            yield np.full(1_000_000, i, dtype=np.uint8)  # 1 MB each: scattered, not inside the queue

    @anyray.remote
    def total(block):
        return int(block.sum())

    refs = list(blocks.remote(3))
    assert [int(anyray.get(r, timeout=DEADLINE)[0]) for r in refs] == [0, 1, 2]
    assert anyray.get([total.remote(r) for r in refs], timeout=DEADLINE) == [0, 1_000_000, 2_000_000]


def test_small_streamed_values_pass_to_tasks_inside_values_and_as_arguments(session):
    @anyray.remote
    def words():
        yield from ("a", "bb")

    @anyray.remote
    def length(word, box):
        return len(word) + len(anyray.get(box[0]))

    a, bb = words.remote()
    assert anyray.get(length.remote(a, [bb]), timeout=DEADLINE) == 3
    assert anyray.get(anyray.get(anyray.put([a])), timeout=DEADLINE) == ["a"]


def test_a_yielded_ref_and_a_value_holding_refs_stream(session):
    @anyray.remote
    def refs():
        inner = anyray.put("inside")
        yield inner
        yield [inner]

    first, second = refs.remote()
    assert anyray.get(anyray.get(first, timeout=DEADLINE), timeout=DEADLINE) == "inside"
    assert anyray.get(anyray.get(second, timeout=DEADLINE)[0], timeout=DEADLINE) == "inside"


def test_cancel_stops_a_running_generator_at_its_next_yield(session, tmp_path):
    path = str(tmp_path / "produced")

    @anyray.remote
    def endless(path):
        i = 0
        while True:
            with open(path, "a") as f:
                f.write(f"{i}\n")
            yield i
            i += 1
            time.sleep(0.02)

    gen = endless.remote(path)
    assert anyray.get(next(gen), timeout=DEADLINE) == 0
    anyray.cancel(gen)
    with pytest.raises(TaskCancelledError):
        anyray.get(next(gen), timeout=DEADLINE)
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(TaskCancelledError):
        anyray.get(gen.completed(), timeout=DEADLINE)
    time.sleep(1.0)
    produced = _lines(path)
    time.sleep(1.0)
    assert _lines(path) == produced  # the producer stopped


def test_cancel_stops_a_running_actor_generator_method(session):
    @anyray.remote
    class Ticker:
        def ticks(self):
            i = 0
            while True:
                yield i
                i += 1
                time.sleep(0.02)

        def ping(self):
            return "pong"

    ticker = Ticker.options(max_concurrency=2).remote()
    gen = ticker.ticks.remote()
    assert anyray.get(next(gen), timeout=DEADLINE) == 0
    anyray.cancel(gen)
    errors = []
    for ref in gen:
        try:
            anyray.get(ref, timeout=DEADLINE)
        except TaskCancelledError as exc:
            errors.append(exc)
    assert len(errors) == 1
    assert anyray.get(ticker.ping.remote(), timeout=DEADLINE) == "pong"


def test_a_dropped_generator_with_backpressure_lets_its_producer_end(session, tmp_path):
    path = str(tmp_path / "produced")

    @anyray.remote
    def counted(path, n):
        for i in range(n):
            with open(path, "a") as f:
                f.write(f"{i}\n")
            yield i

    gen = counted.options(_generator_backpressure_num_objects=1).remote(path, 100)
    done = gen.completed()
    _wait_for(lambda: _lines(path) >= 1, "the first value")
    del gen  # nobody will take a ref: the producer, waiting for room, ends
    assert anyray.get(done, timeout=DEADLINE) is None
    assert _lines(path) < 100


def test_stream_queues_are_released_once_streams_end(session):
    @anyray.remote
    def count_to(n):
        yield from range(n)

    @anyray.remote
    def fail_after(k):
        yield from range(k)
        raise ValueError("failed")

    assert [anyray.get(r) for r in count_to.remote(3)] == [0, 1, 2]
    gen = fail_after.remote(1)
    assert len(list(gen)) == 2
    dropped = count_to.options(_generator_backpressure_num_objects=2).remote(5)
    del dropped, gen
    _wait_for(lambda: _stream_queues() == [], "the stream queues released")


def test_a_generator_consumed_inside_a_task(session):
    @anyray.remote
    def count_to(n):
        yield from range(n)

    @anyray.remote
    def consume(n):
        return [anyray.get(ref) for ref in count_to.remote(n)]

    assert anyray.get([consume.remote(3), consume.remote(2)], timeout=DEADLINE) == [[0, 1, 2], [0, 1]]


def test_a_generator_whose_argument_failed_ends_with_that_error(session):
    @anyray.remote
    def broken():
        raise KeyError("no input")

    @anyray.remote
    def echo(x):
        yield x

    out = []
    for ref in echo.remote(broken.remote()):
        with pytest.raises(KeyError):
            anyray.get(ref, timeout=DEADLINE)
        out.append(ref)
    assert len(out) == 1


def test_sys_exit_in_a_generator_task_reruns_it_without_repeating_values(session, tmp_path):
    marker = str(tmp_path / "exited")

    @anyray.remote(max_retries=1)
    def exits_once(marker):
        for i in range(4):
            if i == 2 and not os.path.exists(marker):
                open(marker, "w").close()
                raise SystemExit(1)
            yield i

    assert [anyray.get(r, timeout=DEADLINE) for r in exits_once.remote(marker)] == [0, 1, 2, 3]


def test_backpressure_on_an_async_actor_generator_method(session, tmp_path):
    import asyncio

    @anyray.remote
    class Producer:
        async def counted(self, path, n):
            for i in range(n):
                with open(path, "a") as f:
                    f.write(f"{i}\n")
                await asyncio.sleep(0)
                yield i

        async def ping(self):
            return "pong"

    path = str(tmp_path / "produced")
    actor = Producer.remote()
    gen = actor.counted.options(_generator_backpressure_num_objects=2).remote(path, 5)
    _wait_for(lambda: _lines(path) >= 2, "two values produced")
    time.sleep(0.5)
    assert _lines(path) == 2
    assert anyray.get(actor.ping.remote(), timeout=DEADLINE) == "pong"  # the actor's loop is not blocked
    assert [anyray.get(r, timeout=DEADLINE) for r in gen] == [0, 1, 2, 3, 4]
