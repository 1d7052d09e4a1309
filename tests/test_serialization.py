"""Serialization: protocol-5 buffers stay out of band, refs inside values are tracked."""

import pickle
import threading

import numpy as np
import pyarrow as pa
import pytest

from anyray import serialization
from anyray.object_ref import ObjectRef


def test_numpy_array_buffer_goes_out_of_band_without_a_copy():
    arr = np.arange(1_000_000, dtype=np.int64)
    obj = serialization.serialize({"a": arr})
    assert len(obj.data) < 1000, "the array must not be flattened into the pickle stream"
    assert len(obj.buffers) == 1
    raw = obj.buffers[0].raw()
    assert np.shares_memory(np.frombuffer(raw, dtype=np.int64), arr)
    back = serialization.deserialize(obj.copy_buffers())
    assert np.array_equal(back["a"], arr)
    assert not back["a"].flags.writeable, "arrays rebuilt from store bytes are read-only"


def test_arrow_buffers_go_out_of_band():
    table = pa.table({"x": np.arange(200_000), "y": np.ones(200_000)})
    obj = serialization.serialize(table)
    assert len(obj.data) < 10_000
    assert sum(pickle.PickleBuffer(b).raw().nbytes for b in obj.buffers) >= 200_000 * 16
    assert serialization.deserialize(obj.copy_buffers()).equals(table)


def test_small_buffers_are_copied_and_come_back_read_only():
    arr = np.arange(10)
    obj = serialization.serialize(arr)
    assert [type(b) for b in obj.buffers] == [bytes], "a small buffer is copied at once, not viewed"
    arr[0] = 99
    back = serialization.deserialize(obj.copy_buffers())
    assert back[0] == 0
    assert not back.flags.writeable, "objects are immutable whatever their size, as in Ray"


def test_refs_pickled_inside_a_value_are_collected():
    a, b = ObjectRef(b"a" * 16), ObjectRef(b"b" * 16)
    obj = serialization.serialize({"nested": [a, (b,)]})
    assert obj.contained_refs == [a, b]
    assert serialization.deserialize(obj) == {"nested": [a, (b,)]}


def test_an_unpicklable_value_names_its_type_and_what_to_do():
    with pytest.raises(serialization.SerializationError, match=r"argument of f of type lock.*picklable"):
        serialization.serialize(threading.Lock(), what="an argument of f")
    with pytest.raises(TypeError):  # SerializationError is a TypeError, as Ray raises
        serialization.serialize({"k": threading.Lock()})


@pytest.mark.parametrize("args, kwargs", [
    ((), {}), ((1, "x", None, 2.5, b"y", True), {}), ("refs", {}), ((1,), {"k": 2}), (([1],), {}),
])
def test_call_arguments_pickle_and_collect_their_refs_as_any_value_does(args, kwargs):
    """The arguments of a call (plain ones take a faster path) give the same stream and the same contained
    refs as the value ``(args, kwargs)`` pickled the general way: a ref passed twice is collected once, two
    refs of one object twice, as the pickler's memo has it."""
    if args == "refs":
        a, b = ObjectRef(b"a" * 16), ObjectRef(b"b" * 16)
        args = (a, 1, b, a, ObjectRef(b"a" * 16))
    fast = serialization.serialize_arguments(args, kwargs, "f")
    general = serialization.serialize((args, kwargs))
    assert fast.data == general.data and fast.buffers == general.buffers == []
    assert list(map(id, fast.contained_refs)) == list(map(id, general.contained_refs))
    assert serialization.deserialize(fast) == (args, kwargs)
