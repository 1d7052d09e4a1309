"""Objects: put/get/wait semantics, ObjectRef behaviour, immutability and zero-copy reads.

Proves that ``get`` returns values in the order asked and times out with a
``GetTimeoutError`` that is also a ``TimeoutError``; that ``wait`` honours
``num_returns`` and ``timeout`` and keeps the input order inside each list,
with ``fetch_local`` True or False;
that refs are hashable, have ``.hex()``, can be awaited and turned into
futures; and that a stored object cannot be changed through its source or
through a value read from it.
"""

import asyncio
import concurrent.futures

import numpy as np
import pytest

import anyray
from anyray.conformance.helpers import echo, wait_for_signal
from anyray.exceptions import GetTimeoutError, TaskError

pytestmark = pytest.mark.usefixtures("anyray_session")


@pytest.mark.parametrize("value", [
    0, 1.5, "text", b"bytes", None, [1, [2, 3]], {"a": (1, 2)}, {1, 2}, np.arange(5), np.zeros((100, 100, 30)),
])
def test_put_get_round_trip(value):
    got = anyray.get(anyray.put(value))
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(got, value)
        assert got.dtype == value.dtype
    else:
        assert got == value
        assert type(got) is type(value)


def test_get_a_list_returns_values_in_order():
    refs = [anyray.put(i) for i in range(20)] + [echo.remote(i) for i in range(20, 40)]
    assert anyray.get(refs) == list(range(40))
    assert anyray.get(tuple(refs[:3])) == [0, 1, 2]
    assert anyray.get([]) == []


def test_get_the_same_ref_twice_in_one_call():
    ref = anyray.put("twice")
    assert anyray.get([ref, ref]) == ["twice", "twice"]


def test_get_timeout_is_a_float_and_raises_get_timeout_error(signal):
    ref = wait_for_signal.remote(signal, "late")
    with pytest.raises(GetTimeoutError) as info:
        anyray.get(ref, timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, anyray.exceptions.AnyrayError)
    with pytest.raises(TimeoutError):
        anyray.get([anyray.put(1), ref], timeout=0.1)
    signal.send.remote()
    assert anyray.get(ref, timeout=30.0) == "late"


def test_get_timeout_zero_returns_ready_objects():
    ref = anyray.put("ready")
    assert anyray.get(ref, timeout=0) == "ready"


def test_wait_returns_ready_and_not_ready(signal):
    done = anyray.put("done")
    pending = wait_for_signal.remote(signal)
    ready, not_ready = anyray.wait([pending, done], num_returns=1, timeout=30)
    assert ready == [done]
    assert not_ready == [pending]


def test_wait_timeout_returns_what_is_ready(signal):
    done = anyray.put("done")
    pending = wait_for_signal.remote(signal)
    ready, not_ready = anyray.wait([pending, done], num_returns=2, timeout=0.1)
    assert ready == [done]
    assert not_ready == [pending]


def test_wait_timeout_zero_does_not_block(signal):
    pending = wait_for_signal.remote(signal)
    assert anyray.wait([pending], timeout=0) == ([], [pending])


def test_wait_keeps_the_input_order_in_each_list(signal):
    pending = [wait_for_signal.remote(signal, i) for i in range(3)]
    done = [anyray.put(i) for i in range(3)]
    refs = [pending[0], done[2], pending[1], done[0], pending[2], done[1]]
    ready, not_ready = anyray.wait(refs, num_returns=3, timeout=30)
    assert ready == [done[2], done[0], done[1]]
    assert not_ready == pending


def test_wait_num_returns_limits_the_ready_list():
    refs = [anyray.put(i) for i in range(5)]
    ready, not_ready = anyray.wait(refs, num_returns=2, timeout=30)
    assert len(ready) == 2 and len(not_ready) == 3
    assert set(ready) | set(not_ready) == set(refs)
    assert ready == [r for r in refs if r in ready]
    assert not_ready == [r for r in refs if r in not_ready]


def test_wait_blocks_until_num_returns_are_ready(signal):
    pending = wait_for_signal.remote(signal, "x")
    done = anyray.put("y")
    signal.send.remote()
    ready, not_ready = anyray.wait([pending, done], num_returns=2)
    assert ready == [pending, done] and not_ready == []


@anyray.remote
def _large_array(n):
    return np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("fetch_local", [True, False])
def test_wait_fetch_local_true_or_false_reports_the_ready_objects(signal, fetch_local):
    small = echo.remote("small")
    large = _large_array.remote(1_000_000)  # a result in the store (maybe on another node)
    late = wait_for_signal.remote(signal, "late")
    ready, not_ready = anyray.wait([late, small, large], num_returns=2, timeout=60, fetch_local=fetch_local)
    assert ready == [small, large] and not_ready == [late]
    assert anyray.get(small) == "small"
    array = anyray.get(large)
    assert array.shape == (1_000_000,) and array[-1] == 999_999
    assert anyray.wait([late], timeout=0, fetch_local=fetch_local) == ([], [late])
    signal.send.remote()
    assert anyray.wait([late], timeout=60, fetch_local=fetch_local) == ([late], [])
    assert anyray.get(late) == "late"


def test_refs_are_hashable_and_compare_by_identity_of_the_object():
    a, b = anyray.put(1), anyray.put(1)
    assert a != b
    assert hash(a) == hash(a)
    table = {a: "a", b: "b"}
    assert table[a] == "a" and table[b] == "b"
    assert len({a, b, a}) == 2
    (same,) = anyray.get(anyray.put([a]))
    assert same == a and hash(same) == hash(a)


def test_ref_hex_is_a_stable_hex_string():
    a, b = anyray.put(1), anyray.put(2)
    assert isinstance(a.hex(), str)
    int(a.hex(), 16)
    assert a.hex() == a.hex()
    assert a.hex() != b.hex()


def test_await_a_ref():
    ref = echo.remote("awaited")

    async def main():
        return await ref

    assert asyncio.run(main()) == "awaited"


def test_await_a_failed_ref_raises_its_error():
    @anyray.remote
    def fail():
        raise ValueError("awaited failure")

    async def main():
        return await fail.remote()

    with pytest.raises(ValueError, match="awaited failure"):
        asyncio.run(main())


def test_await_many_refs_with_gather():
    refs = [echo.remote(i) for i in range(5)]

    async def main():
        return await asyncio.gather(*refs)

    assert asyncio.run(main()) == list(range(5))


def test_ref_future():
    future = echo.remote("future").future()
    assert isinstance(future, concurrent.futures.Future)
    assert future.result(timeout=30) == "future"


def test_ref_future_carries_the_error():
    @anyray.remote
    def fail():
        raise KeyError("from future")

    future = fail.remote().future()
    with pytest.raises(KeyError):
        future.result(timeout=30)
    assert isinstance(future.exception(timeout=30), TaskError)


def test_mutating_a_got_value_does_not_change_the_object():
    ref = anyray.put({"items": [1, 2]})
    got = anyray.get(ref)
    got["items"].append(3)
    got["new"] = True
    assert anyray.get(ref) == {"items": [1, 2]}


@pytest.mark.parametrize("length", [1_000, 1_000_000])  # 8 KB (an out-of-band buffer, inline), 8 MB
def test_mutating_the_put_source_does_not_change_the_object(length):
    source = {"items": [1, 2]}
    array = np.zeros(length)
    ref = anyray.put((source, array))
    source["items"].append(3)
    array[0] = 99.0
    stored, stored_array = anyray.get(ref)
    assert stored == {"items": [1, 2]}
    assert stored_array[0] == 0.0
    try:
        stored_array[1] = 5.0  # read-only where the store shares memory; a private copy elsewhere
    except ValueError:
        pass
    assert anyray.get(ref)[1][1] == 0.0


def test_mutating_a_task_result_does_not_change_the_object():
    @anyray.remote
    def make():
        return [1, 2, 3]

    ref = make.remote()
    anyray.get(ref).append(4)
    assert anyray.get(ref) == [1, 2, 3]


def test_large_numpy_arrays_survive_a_round_trip():
    array = np.random.default_rng(0).random((512, 512))
    got = anyray.get(anyray.put(array))
    np.testing.assert_array_equal(got, array)


@pytest.mark.requires("zero_copy")
def test_large_numpy_arrays_are_read_zero_copy_and_read_only():
    array = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    ref = anyray.put(array)
    first, second = anyray.get(ref), anyray.get(ref)
    assert not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 1.0
    assert np.shares_memory(first, second)
    np.testing.assert_array_equal(first, array)


@pytest.mark.requires("zero_copy")
def test_large_numpy_task_results_are_read_only():
    @anyray.remote
    def make():
        return np.ones(1 << 18)

    out = anyray.get(make.remote())
    assert not out.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 0.0


def test_pyarrow_table_round_trip():
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"ints": list(range(100_000)), "strs": [str(i) for i in range(100_000)]})
    assert anyray.get(anyray.put(table)).equals(table)

    @anyray.remote
    def summarize(t):
        return t.num_rows, t.column("ints").to_pylist()[-1], t.slice(0, 2)

    rows, last, head = anyray.get(summarize.remote(table))
    assert (rows, last) == (100_000, 99_999)
    assert head.equals(table.slice(0, 2))
