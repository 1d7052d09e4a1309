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
