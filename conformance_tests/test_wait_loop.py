"""``wait`` called again and again on the ``not_ready`` list it returned (a wait loop).

Proves that a loop of ``wait(num_returns=1)`` over many refs hands out every
ref exactly once and keeps both of its lists in the input order; that the
``not_ready`` list is an ordinary list to its holder (it compares, copies,
pickles into a task as a list) whose changes ``wait``
honours (refs removed, added, reordered, duplicated); and that an older list
of the same loop, handed to ``wait`` again, still gets the whole answer; and
that a task cancelled while its wait loop blocks is cancelled.
"""

import copy

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Recorder, echo, recorded, wait_for_signal
from anyray.exceptions import TaskCancelledError

pytestmark = pytest.mark.usefixtures("anyray_session")


def test_a_wait_loop_hands_out_every_ref_once():
    refs = [echo.remote(i) for i in range(200)]
    seen, left, calls = [], refs, 0
    while left:
        ready, left = anyray.wait(left, num_returns=1, timeout=60)
        assert len(ready) == 1
        seen += ready
        calls += 1
    assert calls == 200
    assert sorted(anyray.get(seen)) == list(range(200))
    assert anyray.wait(left, num_returns=1, timeout=0) == ([], [])


def test_a_wait_loops_lists_keep_the_input_order(signal):
    pending = [wait_for_signal.remote(signal, i) for i in range(3)]
    done = [anyray.put(i) for i in range(4)]
    refs = [pending[0], done[3], pending[1], done[0], pending[2], done[1], done[2]]
    taken, left = [], refs
    for _ in range(4):
        ready, left = anyray.wait(left, num_returns=1, timeout=30)
        assert len(ready) == 1 and ready[0] in done and ready[0] not in taken
        taken += ready
        assert left == [r for r in refs if r not in taken]
    assert left == pending
    assert anyray.wait(left, num_returns=2, timeout=0.2) == ([], pending)
    assert anyray.wait(left, num_returns=1, timeout=0) == ([], pending)
    signal.send.remote()
    ready, left = anyray.wait(left, num_returns=3, timeout=60)
    assert ready == pending and left == []


def test_wait_honours_changes_to_the_list_it_returned(signal):
    pending = [wait_for_signal.remote(signal, i) for i in range(2)]
    done = [anyray.put(i) for i in range(3)]
    ready, left = anyray.wait([pending[0], done[0], pending[1]], num_returns=1, timeout=30)
    assert ready == [done[0]] and left == pending
    extra = anyray.put("extra")
    left.insert(0, extra)
    ready, left = anyray.wait(left, num_returns=1, timeout=30)
    assert ready == [extra] and left == pending
    left.append(done[1])
    left.reverse()
    ready, left = anyray.wait(left, num_returns=1, timeout=30)
    assert ready == [done[1]] and left == [pending[1], pending[0]]
    left.append(done[2])
    left.remove(done[2])
    assert anyray.wait(left, num_returns=1, timeout=0) == ([], [pending[1], pending[0]])
    left[0] = done[2]
    ready, left = anyray.wait(left, num_returns=1, timeout=30)
    assert ready == [done[2]] and left == [pending[0]]
    with pytest.raises(ValueError):
        anyray.wait(left, num_returns=2, timeout=0)
    left += [pending[0]]
    with pytest.raises(ValueError):
        anyray.wait(left, num_returns=1, timeout=0)
    left.clear()
    assert anyray.wait(left, num_returns=1, timeout=0) == ([], [])
    signal.send.remote()


def test_an_older_list_of_a_wait_loop_still_gets_the_whole_answer(signal):
    from anyray.conformance.helpers import Signal

    other = Signal.remote()
    try:
        first_pending, second_pending = wait_for_signal.remote(signal, 0), wait_for_signal.remote(other, 1)
        done = anyray.put("done")
        ready, first = anyray.wait([first_pending, second_pending, done], num_returns=1, timeout=30)
        assert ready == [done] and first == [first_pending, second_pending]
        signal.send.remote()
        ready, second = anyray.wait(first, num_returns=1, timeout=60)
        assert ready == [first_pending] and second == [second_pending]
        assert anyray.wait(first, num_returns=1, timeout=30) == ([first_pending], [second_pending])
        assert anyray.wait(second, num_returns=1, timeout=0) == ([], [second_pending])
        other.send.remote()
        assert anyray.wait(first, num_returns=2, timeout=60) == ([first_pending, second_pending], [])
        assert anyray.wait(second, num_returns=1, timeout=60) == ([second_pending], [])
    finally:
        other.send.remote()


@anyray.remote
def _count_refs(refs):
    return type(refs).__name__, len(refs), anyray.get(refs[0])


def test_the_not_ready_list_is_a_list_to_its_holder(signal):
    pending = [wait_for_signal.remote(signal, i) for i in range(2)]
    _, left = anyray.wait([anyray.put("x"), *pending], num_returns=1, timeout=30)
    assert isinstance(left, list) and left == pending and list(left) == pending
    assert copy.copy(left) == pending and type(copy.copy(left)) is list
    assert left[1:] == pending[1:] and left + [] == pending
    signal.send.remote()
    assert anyray.get(_count_refs.remote(left), timeout=60) == ("list", 2, 0)


@anyray.remote
def _waits_in_a_loop(signal, recorder):
    pending = [wait_for_signal.remote(signal, i) for i in range(2)]
    _, left = anyray.wait([anyray.put(0), *pending], num_returns=1, timeout=DEADLINE)
    _, left = anyray.wait(left, num_returns=1, timeout=0)
    anyray.get(recorder.record.remote("looping"))
    anyray.wait(left, num_returns=1)  # blocks until cancelled
    return "not cancelled"


def test_a_task_cancelled_in_a_wait_loop_is_cancelled(signal):
    recorder = Recorder.remote()
    ref = _waits_in_a_loop.remote(signal, recorder)
    recorded(recorder, "looping")
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    signal.send.remote()
