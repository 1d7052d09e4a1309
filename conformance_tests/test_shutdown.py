"""What outlives a runtime: refs kept from before ``shutdown()`` and a new ``init()`` (as in a notebook).

Proves that using such a ref (``get``, ``wait``, ``cancel``, or passing it to
a task) raises a clear ``ValueError`` at once, saying the ref belongs to a
runtime that was shut down and what to do, instead of waiting for an object
that no longer exists; and that the new runtime works on.
"""

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, assert_runtime_works, echo

STALE = r"ObjectRef\(\w+\) belongs to an anyray runtime that was shut down.*run the code that made the ref again"


@anyray.remote
def plus_one(x):
    return x + 1


def test_refs_kept_across_shutdown_and_init_raise_a_clear_error(isolated_runtime):
    anyray.init(**isolated_runtime)
    result = echo.remote("made before")
    stored = anyray.put([1, 2, 3])
    assert anyray.get(result, timeout=DEADLINE) == "made before"
    anyray.shutdown()
    anyray.init(**isolated_runtime)
    for ref in (result, stored):
        with pytest.raises(ValueError, match=r"get\(\): " + STALE):
            anyray.get(ref, timeout=DEADLINE)
    with pytest.raises(ValueError, match=r"get\(\): " + STALE):
        anyray.get([anyray.put(0), result], timeout=DEADLINE)
    with pytest.raises(ValueError, match=r"wait\(\): " + STALE):
        anyray.wait([result], timeout=DEADLINE)
    with pytest.raises(ValueError, match=r"plus_one\.remote\(\): " + STALE):
        plus_one.remote(result)
    with pytest.raises(ValueError, match=r"cancel\(\): " + STALE):
        anyray.cancel(result)
    assert anyray.get(plus_one.remote(anyray.put(41)), timeout=DEADLINE) == 42
    assert_runtime_works()
