"""Generators: tasks and actor methods that stream one ObjectRef per ``yield``, as Ray 2.x does.

Proves that a generator remote function or actor method returns an
``ObjectRefGenerator`` by default and with ``num_returns="streaming"``, whose
``next()`` gives a ref once its value exists, in yield order, ending with
``StopIteration`` (every time after); async iteration (``async for``,
``__anext__``) in an asyncio driver and in async actors; an error after k yields
reaching the k-th ref as a ``TaskError`` of the user's class; ``wait`` and
``cancel`` on a generator; ``completed()``, ``next_ready()``, ``is_finished()``;
``num_returns="dynamic"`` (one ref to a ``DynamicObjectRefGenerator``) and a
static ``num_returns=N`` yielding exactly, more or fewer than N values; a worker
crash mid-stream, retried without yielding a consumed value twice or failing the
next ref; backpressure (``_generator_backpressure_num_objects``); and the bad
input Ray rejects when the function is decorated.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import time

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, wait_until
from anyray.exceptions import TaskCancelledError, TaskError, WorkerCrashedError

# The generators here loop (`for ...: yield`) instead of `yield from` an iterator: Ray drives a generator
# task with send(), which `yield from` passes on to iterators that have no send() (a range, a str).
# ruff: noqa: UP028

pytestmark = pytest.mark.usefixtures("anyray_session")


class StreamError(Exception):
    pass


@anyray.remote
def count_to(n):
    for i in range(n):
        yield i


@anyray.remote
def fail_after(k):
    for i in range(k):
        yield i
    raise StreamError(f"failed after {k} yields")


@anyray.remote
def yield_then_wait(signal):
    yield "first"
    anyray.get(signal.wait.remote())
    yield "second"


def drain(gen) -> list:
    """The values of every ref ``gen`` gives, each error as its class name; stops at StopIteration."""
    out = []
    for ref in gen:
        try:
            out.append(anyray.get(ref, timeout=DEADLINE))
        except Exception as exc:  # noqa: BLE001 - the test compares what each ref holds
            out.append(exc)
    return out


# -- what .remote() returns ------------------------------------------------------


def test_a_generator_task_returns_an_object_ref_generator_by_default():
    gen = count_to.remote(3)
    assert isinstance(gen, anyray.ObjectRefGenerator)
    refs = list(gen)
    assert all(isinstance(ref, anyray.ObjectRef) for ref in refs)
    assert anyray.get(refs, timeout=DEADLINE) == [0, 1, 2]


def test_num_returns_streaming_returns_an_object_ref_generator():
    @anyray.remote(num_returns="streaming")
    def letters():
        for letter in "abc":
            yield letter

    gen = letters.remote()
    assert isinstance(gen, anyray.ObjectRefGenerator)
    assert drain(gen) == ["a", "b", "c"]
    assert drain(count_to.options(num_returns="streaming").remote(2)) == [0, 1]


def test_an_object_ref_generator_has_no_length_and_does_not_pickle():
    gen = count_to.remote(2)
    with pytest.raises(TypeError):
        len(gen)
    with pytest.raises(TypeError):
        pickle.dumps(gen)
    assert drain(gen) == [0, 1]


# -- iteration --------------------------------------------------------------------


def test_the_end_raises_stop_iteration_every_time_and_iterating_again_gives_nothing():
    gen = count_to.remote(2)
    assert [anyray.get(next(gen)), anyray.get(next(gen))] == [0, 1]
    for _ in range(3):
        with pytest.raises(StopIteration):
            next(gen)
    assert list(gen) == []


def test_next_gives_a_ref_only_once_its_value_exists(signal):
    @anyray.remote
    def slow(signal):
        for i in range(3):
            if i == 2:
                anyray.get(signal.wait.remote())
            time.sleep(0.05)
            yield i

    gen = slow.remote(signal)
    for expected in (0, 1):
        ref = next(gen)
        ready, _ = anyray.wait([ref], timeout=0)
        assert ready == [ref]
        assert anyray.get(ref, timeout=0) == expected
    assert gen.next_ready() is False  # the producer waits for the signal before its third yield
    signal.send.remote()
    ref = next(gen)
    assert anyray.wait([ref], timeout=0)[0] == [ref]
    assert anyray.get(ref) == 2
    with pytest.raises(StopIteration):
        next(gen)


def test_next_ready_and_is_finished(signal):
    gen = yield_then_wait.remote(signal)
    wait_until(gen.next_ready, what="the first value ready")
    assert gen.is_finished() is False
    assert anyray.get(next(gen)) == "first"
    assert gen.next_ready() is False
    signal.send.remote()
    wait_until(gen.next_ready, what="the second value ready")
    assert anyray.get(next(gen)) == "second"
    wait_until(gen.is_finished, what="the generator finished")
    assert gen.next_ready() is False
    with pytest.raises(StopIteration):
        next(gen)


def test_completed_resolves_to_none_when_the_generator_ends():
    gen = count_to.remote(3)
    assert isinstance(gen.completed(), anyray.ObjectRef)
    assert anyray.get(gen.completed(), timeout=DEADLINE) is None
    assert drain(gen) == [0, 1, 2]


def test_refs_keep_their_values_after_the_generator_is_dropped():
    gen = count_to.remote(3)
    refs = [next(gen), next(gen)]
    del gen
    assert anyray.get(refs, timeout=DEADLINE) == [0, 1]


def test_yielded_refs_can_be_passed_to_other_tasks():
    @anyray.remote
    def double(x):
        return 2 * x

    assert anyray.get([double.remote(ref) for ref in count_to.remote(3)], timeout=DEADLINE) == [0, 2, 4]


def test_a_generator_cannot_be_passed_to_a_task_or_put(signal):
    @anyray.remote
    def consume(gen):
        return list(gen)

    gen = count_to.remote(2)
    with pytest.raises(TypeError):
        consume.remote(gen)
    with pytest.raises(TypeError):
        anyray.put(gen)
    assert drain(gen) == [0, 1]  # still usable by its owner


def test_get_of_a_list_holding_a_generator_is_a_type_error():
    gen = count_to.remote(1)
    with pytest.raises(TypeError):
        anyray.get([gen])
    assert drain(gen) == [0]


def test_get_of_a_generator_itself_gives_it_back():
    gen = count_to.remote(2)
    assert anyray.get(gen) is gen  # as Ray: not an error, and nothing is taken from the stream
    assert drain(gen) == [0, 1]


# -- errors -----------------------------------------------------------------------


def test_an_error_after_some_yields_reaches_the_next_ref_then_the_stream_ends():
    gen = fail_after.remote(2)
    assert anyray.get(next(gen), timeout=DEADLINE) == 0
    assert anyray.get(next(gen), timeout=DEADLINE) == 1
    bad = next(gen)
    with pytest.raises(StreamError, match="failed after 2 yields") as info:
        anyray.get(bad, timeout=DEADLINE)
    assert isinstance(info.value, TaskError)
    with pytest.raises(StopIteration):
        next(gen)
    assert anyray.get(gen.completed(), timeout=DEADLINE) is None  # the error went to the stream


def test_an_error_before_the_first_yield_reaches_the_first_ref():
    out = drain(fail_after.remote(0))
    assert len(out) == 1
    assert isinstance(out[0], StreamError) and isinstance(out[0], TaskError)


# -- actors -----------------------------------------------------------------------


@anyray.remote
class Streamer:
    def numbers(self, n):
        for i in range(n):
            yield i

    def failing(self, k):
        for i in range(k):
            yield i
        raise StreamError("actor stream failed")


@anyray.remote(max_concurrency=4)
class ThreadedStreamer:
    def numbers(self, n):
        for i in range(n):
            yield i


@anyray.remote
class AsyncStreamer:
    async def numbers(self, n):
        for i in range(n):
            await asyncio.sleep(0.001)
            yield i

    async def consume(self, n):
        out = []
        async for ref in count_to.remote(n):
            out.append(await ref)
        return out

    async def consume_with_anext(self, n):
        gen = count_to.remote(n)
        out = []
        while True:
            try:
                ref = await gen.__anext__()
            except StopAsyncIteration:
                return out
            out.append(await ref)


@pytest.mark.parametrize("cls", [Streamer, ThreadedStreamer, AsyncStreamer], ids=["sync", "threaded", "async"])
def test_generator_methods_stream_on_every_kind_of_actor(cls):
    actor = cls.remote()
    gen = actor.numbers.remote(3)
    assert isinstance(gen, anyray.ObjectRefGenerator)
    assert drain(gen) == [0, 1, 2]
    assert drain(actor.numbers.options(num_returns="streaming").remote(2)) == [0, 1]


def test_an_actor_generator_error_reaches_the_next_ref():
    out = drain(Streamer.remote().failing.remote(1))
    assert out[0] == 0 and len(out) == 2
    assert isinstance(out[1], StreamError) and isinstance(out[1], TaskError)


def test_async_iteration_inside_an_async_actor():
    actor = AsyncStreamer.remote()
    assert anyray.get(actor.consume.remote(3), timeout=DEADLINE) == [0, 1, 2]
    assert anyray.get(actor.consume_with_anext.remote(2), timeout=DEADLINE) == [0, 1]


def test_async_iteration_in_an_asyncio_driver():
    async def main():
        out = []
        async for ref in count_to.remote(3):
            out.append(await ref)
        gen = count_to.remote(1)
        out.append(await (await gen.__anext__()))
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return out

    assert asyncio.run(main()) == [0, 1, 2, 0]


# -- num_returns="dynamic" and static N -------------------------------------------


@anyray.remote(num_returns="dynamic")
def dynamic_count(n):
    for i in range(n):
        yield i


def test_dynamic_returns_one_ref_to_a_dynamic_object_ref_generator():
    ref = dynamic_count.remote(3)
    assert isinstance(ref, anyray.ObjectRef)
    dyn = anyray.get(ref, timeout=DEADLINE)
    assert isinstance(dyn, anyray.DynamicObjectRefGenerator)
    assert len(dyn) == 3
    refs = list(dyn)
    assert all(isinstance(r, anyray.ObjectRef) for r in refs)
    assert anyray.get(refs) == [0, 1, 2]
    assert list(dyn) == [] and len(dyn) == 0  # iterating takes the refs out
    with pytest.raises(TypeError):
        next(dyn)


def test_a_dynamic_generator_ref_can_be_iterated_in_another_task():
    @anyray.remote
    def total(dyn):
        return sum(anyray.get(list(dyn)))

    assert anyray.get(total.remote(dynamic_count.remote(4)), timeout=DEADLINE) == 6
    assert anyray.get(total.remote(anyray.get(dynamic_count.remote(3))), timeout=DEADLINE) == 3


def test_a_dynamic_generator_error_is_its_last_ref():
    @anyray.remote(num_returns="dynamic")
    def dynamic_fail(k):
        for i in range(k):
            yield i
        raise StreamError("dynamic failed")

    dyn = anyray.get(dynamic_fail.remote(2), timeout=DEADLINE)
    assert len(dyn) == 3
    out = drain(dyn)
    assert out[:2] == [0, 1]
    assert isinstance(out[2], StreamError) and isinstance(out[2], TaskError)


def test_dynamic_on_an_actor_method():
    dyn = anyray.get(Streamer.remote().numbers.options(num_returns="dynamic").remote(2), timeout=DEADLINE)
    assert isinstance(dyn, anyray.DynamicObjectRefGenerator)
    assert drain(dyn) == [0, 1]


def test_static_num_returns_on_a_generator():
    assert anyray.get(count_to.options(num_returns=3).remote(3), timeout=DEADLINE) == [0, 1, 2]
    # More yields than num_returns: the first N are kept, the rest dropped, no error (as in Ray).
    assert anyray.get(count_to.options(num_returns=3).remote(5), timeout=DEADLINE) == [0, 1, 2]
    assert anyray.get(count_to.options(num_returns=1).remote(2), timeout=DEADLINE) == 0
    # Fewer: the missing refs raise a ValueError saying how many values came.
    refs = count_to.options(num_returns=3).remote(2)
    assert anyray.get(refs[:2], timeout=DEADLINE) == [0, 1]
    with pytest.raises(ValueError):
        anyray.get(refs[2], timeout=DEADLINE)


def test_static_num_returns_on_an_actor_generator_method():
    actor = Streamer.remote()
    assert anyray.get(actor.numbers.options(num_returns=2).remote(2), timeout=DEADLINE) == [0, 1]
    assert anyray.get(actor.numbers.options(num_returns=2).remote(4), timeout=DEADLINE) == [0, 1]
    refs = actor.numbers.options(num_returns=3).remote(2)
    assert anyray.get(refs[:2], timeout=DEADLINE) == [0, 1]
    with pytest.raises(ValueError):
        anyray.get(refs[2], timeout=DEADLINE)


# -- wait and cancel --------------------------------------------------------------


def test_wait_treats_a_generator_as_ready_when_its_next_ref_is(signal):
    gen = yield_then_wait.remote(signal)
    ready, not_ready = anyray.wait([gen], timeout=DEADLINE)
    assert ready == [gen] and not_ready == []
    assert anyray.get(next(gen)) == "first"
    ready, not_ready = anyray.wait([gen], timeout=0.2)
    assert ready == [] and not_ready == [gen]
    signal.send.remote()
    ready, _ = anyray.wait([gen], timeout=DEADLINE)
    assert ready == [gen]
    assert anyray.get(next(gen)) == "second"
    assert anyray.wait([gen], timeout=DEADLINE)[0] == [gen]  # at its end a generator counts as ready
    with pytest.raises(StopIteration):
        next(gen)


def test_wait_mixes_generators_and_refs():
    gen = count_to.remote(2)
    ref = anyray.put("plain")
    ready, not_ready = anyray.wait([gen, ref], num_returns=2, timeout=DEADLINE)
    assert set(map(id, ready)) == {id(gen), id(ref)} and not_ready == []
    assert drain(gen) == [0, 1]


@anyray.remote
def endless():
    i = 0
    while True:
        yield i
        i += 1
        time.sleep(0.01)


def _until_error(gen) -> BaseException:
    for _ in range(100_000):
        ref = next(gen)
        try:
            anyray.get(ref, timeout=DEADLINE)
        except Exception as exc:  # noqa: BLE001 - the error is what the test looks at
            return exc
    raise AssertionError("the cancelled generator kept yielding")


@pytest.mark.requires("interrupt_cancel")
def test_cancel_a_running_generator():
    gen = endless.remote()
    assert anyray.get(next(gen), timeout=DEADLINE) == 0
    anyray.cancel(gen)
    assert isinstance(_until_error(gen), TaskCancelledError)
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(TaskCancelledError):
        anyray.get(gen.completed(), timeout=DEADLINE)


@pytest.mark.requires("force_cancel")
def test_force_cancel_a_generator_stuck_outside_python():
    @anyray.remote
    def stuck():
        yield "before"
        time.sleep(1000)
        yield "never"

    gen = stuck.remote()
    assert anyray.get(next(gen), timeout=DEADLINE) == "before"
    anyray.cancel(gen, force=True)
    with pytest.raises(TaskCancelledError):
        anyray.get(next(gen), timeout=DEADLINE)
    with pytest.raises(StopIteration):
        next(gen)


# -- worker crashes ----------------------------------------------------------------


@pytest.mark.requires("worker_restart")
def test_a_crash_mid_stream_is_retried_without_yielding_a_value_twice(tmp_path):
    @anyray.remote(max_retries=2)
    def crashes_once(marker, n):
        for i in range(n):
            if i == 3 and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os._exit(1)
            yield i, os.getpid()

    gen = crashes_once.remote(str(tmp_path / "crashed"), 6)
    first = [anyray.get(next(gen), timeout=DEADLINE) for _ in range(2)]
    rest = drain(gen)
    values = first + rest
    assert [i for i, _ in values] == [0, 1, 2, 3, 4, 5]
    crashed_pid = int((tmp_path / "crashed").read_text())
    assert values[5][1] != crashed_pid  # the end came from another process: the retry


@pytest.mark.requires("processes")
def test_a_crash_mid_stream_without_retries_fails_the_next_ref():
    @anyray.remote(max_retries=0)
    def crashes(n):
        for i in range(n):
            if i == 2:
                os._exit(1)
            yield i

    gen = crashes.remote(5)
    out = drain(gen)
    assert out[:2] == [0, 1] and len(out) == 3
    assert isinstance(out[2], WorkerCrashedError)
    with pytest.raises(StopIteration):
        next(gen)
    with pytest.raises(WorkerCrashedError):
        anyray.get(gen.completed(), timeout=DEADLINE)


# -- backpressure -------------------------------------------------------------------


def _lines(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


@anyray.remote
def counted(path, n):
    for i in range(n):
        with open(path, "a") as f:
            f.write(f"{i}\n")
        yield i


def test_backpressure_pauses_the_producer_until_refs_are_taken(tmp_path):
    path = str(tmp_path / "produced")
    gen = counted.options(_generator_backpressure_num_objects=2).remote(path, 6)
    wait_until(lambda: _lines(path) >= 2, what="two values produced")
    time.sleep(0.5)
    assert _lines(path) == 2  # nothing taken: the producer waits with two values unconsumed
    ref = next(gen)  # taking a ref (not reading it) makes room for one more
    wait_until(lambda: _lines(path) >= 3, what="a third value produced")
    assert anyray.get(ref) == 0
    assert drain(gen) == [1, 2, 3, 4, 5]


def test_backpressure_on_an_actor_generator_method(tmp_path):
    @anyray.remote
    class Producer:
        def counted(self, path, n):
            for i in range(n):
                with open(path, "a") as f:
                    f.write(f"{i}\n")
                yield i

    path = str(tmp_path / "produced")
    gen = Producer.remote().counted.options(_generator_backpressure_num_objects=1).remote(path, 4)
    wait_until(lambda: _lines(path) >= 1, what="one value produced")
    time.sleep(0.5)
    assert _lines(path) == 1
    assert drain(gen) == [0, 1, 2, 3]


# -- bad input ----------------------------------------------------------------------


def plain_function():
    return 1


def test_streaming_or_dynamic_on_a_function_that_is_not_a_generator_is_refused_at_once():
    for mode in ("streaming", "dynamic"):
        with pytest.raises(ValueError, match="generator"):
            anyray.remote(num_returns=mode)(plain_function)
        with pytest.raises(ValueError, match="generator"):
            anyray.remote(plain_function).options(num_returns=mode)


def test_streaming_on_an_actor_method_that_is_not_a_generator_is_refused():
    with pytest.raises(ValueError, match="generator"):
        @anyray.remote
        class NotAGenerator:
            @anyray.method(num_returns="streaming")
            def value(self):
                return 1


def test_bad_num_returns_is_refused_at_once():
    def gen():
        yield 1

    for bad in ("bogus", -1, 1.5):
        with pytest.raises((TypeError, ValueError)):
            anyray.remote(num_returns=bad)(gen)
        with pytest.raises((TypeError, ValueError)):
            count_to.options(num_returns=bad)


def test_bad_backpressure_is_refused_at_once():
    with pytest.raises(ValueError):
        count_to.options(_generator_backpressure_num_objects=0).remote(1)
    with pytest.raises(TypeError):
        count_to.options(_generator_backpressure_num_objects="two").remote(1)
    assert drain(count_to.options(_generator_backpressure_num_objects=-1).remote(2)) == [0, 1]
