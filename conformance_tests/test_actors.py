"""Actors: state, call order, handles, names and namespaces, death, errors, concurrency, restarts.

Proves that calls from one caller run in submission order against one
instance's state; that handles work from tasks and other actors; that named
actors are found by name and namespace and listed; that a killed actor or
one whose constructor failed raises ``ActorDiedError``, as do the calls
queued behind one whose process died, while an actor whose method raised
lives on; that async and threaded actors run calls
concurrently (shown by calls that can only finish together); and that
``max_restarts`` brings a killed actor back with fresh state.
"""

import os
import signal as signals
import time
import uuid

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Counter, Recorder, Signal, wait_until
from anyray.exceptions import ActorDiedError, RayActorError, TaskError

pytestmark = pytest.mark.usefixtures("anyray_session")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_an_actor_keeps_state_between_calls():
    counter = Counter.remote(10)
    assert anyray.get(counter.incr.remote()) == 11
    assert anyray.get(counter.incr.remote(5)) == 16
    assert anyray.get(counter.get.remote()) == 16


def test_two_actors_have_separate_state():
    a, b = Counter.remote(), Counter.remote(100)
    anyray.get([a.incr.remote(), a.incr.remote()])
    assert anyray.get([a.get.remote(), b.get.remote()]) == [2, 100]


def test_calls_from_one_caller_run_in_submission_order():
    counter = Counter.remote()
    refs = [counter.append.remote(i) for i in range(100)]
    assert anyray.get(refs) == list(range(1, 101))
    assert anyray.get(counter.get_log.remote()) == list(range(100))


def test_constructor_arguments_may_be_refs():
    counter = Counter.remote(anyray.put(7))
    assert anyray.get(counter.get.remote()) == 7


def test_method_arguments_may_be_refs():
    counter = Counter.remote()
    assert anyray.get(counter.incr.remote(anyray.put(3))) == 3


def test_a_handle_passed_to_a_task():
    counter = Counter.remote()

    @anyray.remote
    def bump(handle, times):
        return anyray.get([handle.incr.remote() for _ in range(times)])[-1]

    assert anyray.get(bump.remote(counter, 3)) == 3
    assert anyray.get(counter.get.remote()) == 3


def test_a_handle_passed_to_another_actor():
    counter = Counter.remote()

    @anyray.remote
    class Caller:
        def __init__(self, target):
            self.target = target

        def bump(self):
            return anyray.get(self.target.incr.remote())

    caller = Caller.remote(counter)
    assert anyray.get(caller.bump.remote()) == 1
    assert anyray.get(caller.bump.remote()) == 2
    assert anyray.get(counter.get.remote()) == 2


def test_a_handle_returned_from_a_task():
    @anyray.remote
    def make():
        handle = Counter.remote(41)
        anyray.get(handle.get.remote())
        return handle

    handle = anyray.get(make.remote())
    assert anyray.get(handle.incr.remote()) == 42


def test_named_actor_is_found_by_name():
    name = unique("named")
    counter = Counter.options(name=name).remote(5)
    try:
        found = anyray.get_actor(name)
        assert anyray.get(found.incr.remote()) == 6
        assert anyray.get(counter.get.remote()) == 6
    finally:
        anyray.kill(counter)


def test_named_actor_in_a_namespace():
    name, namespace = unique("spaced"), unique("ns")
    counter = Counter.options(name=name, namespace=namespace).remote(1)
    other = Counter.options(name=name, namespace=unique("other-ns")).remote(2)
    try:
        assert anyray.get(anyray.get_actor(name, namespace=namespace).get.remote()) == 1
        with pytest.raises(ValueError, match=f"Failed to look up actor with name '{name}'"):
            anyray.get_actor(name)
    finally:
        anyray.kill(counter)
        anyray.kill(other)


def test_list_named_actors():
    name, spaced, namespace = unique("listed"), unique("listed-spaced"), unique("ns")
    here = Counter.options(name=name).remote()
    there = Counter.options(name=spaced, namespace=namespace).remote()
    try:
        anyray.get([here.get.remote(), there.get.remote()])
        names = anyray.list_named_actors()
        assert name in names
        assert spaced not in names
        everywhere = anyray.list_named_actors(all_namespaces=True)
        assert {"name": spaced, "namespace": namespace} in everywhere
        assert any(entry["name"] == name for entry in everywhere)
    finally:
        anyray.kill(here)
        anyray.kill(there)


def test_a_killed_named_actor_is_no_longer_listed():
    name = unique("gone")
    counter = Counter.options(name=name).remote()
    anyray.get(counter.get.remote())
    anyray.kill(counter)
    wait_until(lambda: name not in anyray.list_named_actors(), what="killed actor unlisted")
    with pytest.raises(ValueError, match="Failed to look up actor"):
        anyray.get_actor(name)


def test_get_if_exists_returns_the_existing_actor():
    name = unique("shared")
    first = Counter.options(name=name, get_if_exists=True).remote(1)
    try:
        anyray.get(first.incr.remote())
        second = Counter.options(name=name, get_if_exists=True).remote(100)
        assert anyray.get(second.get.remote()) == 2
    finally:
        anyray.kill(first)


def test_a_taken_name_raises_value_error():
    name = unique("taken")
    first = Counter.options(name=name).remote()
    try:
        with pytest.raises(ValueError, match=f"An actor named '{name}' already exists"):
            Counter.options(name=name).remote()
        assert anyray.get(first.incr.remote()) == 1
    finally:
        anyray.kill(first)


def test_kill_makes_calls_raise_actor_died_error():
    counter = Counter.remote()
    assert anyray.get(counter.incr.remote()) == 1
    anyray.kill(counter)
    with pytest.raises(ActorDiedError):
        anyray.get(counter.incr.remote(), timeout=DEADLINE)
    with pytest.raises(RayActorError):
        anyray.get(counter.get.remote(), timeout=DEADLINE)


def test_kill_fails_the_calls_queued_behind_a_running_one():
    @anyray.remote
    class Blocking:
        def block(self, signal):
            return anyray.get(signal.wait.remote())

        def ping(self):
            return "pong"

    signal = Signal.remote()
    actor = Blocking.remote()
    actor.block.remote(signal)
    queued = actor.ping.remote()
    try:
        anyray.kill(actor)
        with pytest.raises(ActorDiedError):
            anyray.get(queued, timeout=DEADLINE)
    finally:
        signal.send.remote()


def test_a_method_that_raises_gives_a_task_error_and_the_actor_lives_on():
    counter = Counter.remote()
    anyray.get(counter.incr.remote())
    with pytest.raises(ValueError, match="method failed") as info:
        anyray.get(counter.fail.remote("method failed"))
    assert isinstance(info.value, TaskError)
    assert anyray.get(counter.incr.remote()) == 2


def test_a_failing_constructor_kills_the_actor():
    @anyray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("constructor exploded")

        def ping(self):
            return "pong"

    broken = Broken.remote()
    with pytest.raises(ActorDiedError, match="constructor exploded"):
        anyray.get(broken.ping.remote(), timeout=DEADLINE)
    with pytest.raises(ActorDiedError):
        anyray.get(broken.ping.remote(), timeout=DEADLINE)


def test_async_methods():
    @anyray.remote
    class AsyncCounter:
        def __init__(self):
            self.value = 0

        async def incr(self):
            import asyncio

            await asyncio.sleep(0)
            self.value += 1
            return self.value

    counter = AsyncCounter.remote()
    assert sorted(anyray.get([counter.incr.remote() for _ in range(10)])) == list(range(1, 11))


@anyray.remote
class AsyncRendezvous:
    """``meet`` returns only once ``parties`` calls are inside it at the same time."""

    def __init__(self, parties):
        self.parties = parties
        self.inside = 0
        self.most_inside = 0
        self.event = None

    async def meet(self, i):
        import asyncio

        if self.event is None:
            self.event = asyncio.Event()
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        if self.inside >= self.parties:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), DEADLINE)
        self.inside -= 1
        return i

    async def most(self):
        return self.most_inside


@pytest.mark.parametrize("max_concurrency", [None, 4])
def test_async_actor_runs_calls_concurrently(max_concurrency):
    actor = AsyncRendezvous.options(max_concurrency=max_concurrency).remote(4) if max_concurrency \
        else AsyncRendezvous.remote(4)
    # Each call returns only once all four are inside meet() together: one after another, none would.
    assert anyray.get([actor.meet.remote(i) for i in range(4)], timeout=60) == [0, 1, 2, 3]
    assert anyray.get(actor.most.remote()) == 4


def test_threaded_actor_runs_calls_concurrently():
    @anyray.remote
    class Threaded:
        def __init__(self):
            import threading

            self.barrier = threading.Barrier(2, timeout=30)

        def meet(self):
            self.barrier.wait()
            return "met"

    actor = Threaded.options(max_concurrency=2).remote()
    assert anyray.get([actor.meet.remote(), actor.meet.remote()], timeout=60) == ["met", "met"]


def test_a_sync_actor_runs_one_call_at_a_time():
    @anyray.remote
    class Serial:
        def __init__(self):
            self.inside = 0
            self.most = 0

        def work(self, recorder, i):
            self.inside += 1
            self.most = max(self.most, self.inside)
            anyray.get(recorder.record.remote(i))
            self.inside -= 1
            return self.most

    recorder = Recorder.remote()
    actor = Serial.remote()
    assert max(anyray.get([actor.work.remote(recorder, i) for i in range(10)])) == 1
    assert anyray.get(recorder.entries.remote()) == list(range(10))


def test_method_num_returns():
    @anyray.remote
    class Splitter:
        @anyray.method(num_returns=2)
        def halves(self, items):
            middle = len(items) // 2
            return items[:middle], items[middle:]

        def whole(self, items):
            return items

    splitter = Splitter.remote()
    left, right = splitter.halves.remote([1, 2, 3, 4])
    assert anyray.get(left) == [1, 2] and anyray.get(right) == [3, 4]
    assert anyray.get(splitter.whole.remote([1, 2])) == [1, 2]


def test_method_options_override_num_returns():
    counter = Counter.remote(3)
    positive, negative = counter.pair.options(num_returns=2).remote()
    assert anyray.get([positive, negative]) == [3, -3]
    assert anyray.get(counter.pair.remote()) == (3, -3)


def test_actor_class_options_do_not_stick_to_the_class():
    name = unique("opt")
    named = Counter.options(name=name).remote()
    try:
        first, second = Counter.remote(), Counter.remote()
        assert anyray.get([first.incr.remote(), second.incr.remote()]) == [1, 1]
        assert anyray.list_named_actors().count(name) == 1
    finally:
        anyray.kill(named)


@pytest.mark.requires("actor_restart")
def test_max_restarts_brings_a_killed_actor_back():
    counter = Counter.options(max_restarts=1).remote(10)
    assert anyray.get(counter.incr.remote()) == 11
    anyray.kill(counter, no_restart=False)
    assert _call_until_alive(counter.get) == 10
    anyray.kill(counter, no_restart=False)
    with pytest.raises(ActorDiedError):
        _call_until_dead(counter.get)


@pytest.mark.requires("actor_restart")
def test_kill_with_no_restart_ignores_max_restarts():
    counter = Counter.options(max_restarts=5).remote()
    anyray.get(counter.incr.remote())
    anyray.kill(counter)
    with pytest.raises(ActorDiedError):
        _call_until_dead(counter.get)


@pytest.mark.requires("actor_restart")
def test_a_restarted_actor_knows_it_was_reconstructed():
    @anyray.remote(max_restarts=1)
    class Reporter:
        def reconstructed(self):
            return anyray.get_runtime_context().was_current_actor_reconstructed

    reporter = Reporter.remote()
    assert anyray.get(reporter.reconstructed.remote()) is False
    anyray.kill(reporter, no_restart=False)
    assert _call_until_alive(reporter.reconstructed) is True


def _call_until_alive(method):
    """Call until the restarted actor answers: calls made while it restarts may fail, as in Ray."""
    outcome = {}

    def answered():
        try:
            outcome["value"] = anyray.get(method.remote(), timeout=DEADLINE)
            return True
        except (ActorDiedError, anyray.exceptions.ActorUnavailableError):
            return False

    wait_until(answered, what="restarted actor answers")
    return outcome["value"]


def _call_until_dead(method):
    """Raise the ActorDiedError that calls to a dead actor give (a call may race the kill)."""
    wait_until(lambda: not _answers(method), what="killed actor refuses calls")
    anyray.get(method.remote(), timeout=DEADLINE)


def _answers(method) -> bool:
    try:
        anyray.get(method.remote(), timeout=DEADLINE)
        return True
    except ActorDiedError:
        return False


@anyray.remote(num_cpus=1)
class CpuHolder:
    """Holds one CPU while it lives, so its end shows in available_resources()."""

    def echo(self, x):
        return x


def _free_cpus() -> float:
    return anyray.available_resources().get("CPU", 0.0)


def test_an_actor_ends_once_its_last_handle_is_gone_after_its_calls_ran():
    idle = anyray.cluster_resources()["CPU"]
    wait_until(lambda: _free_cpus() == idle, what="CPUs idle")
    holder = CpuHolder.remote()
    refs = [holder.echo.remote(i) for i in range(5)]
    wait_until(lambda: _free_cpus() == idle - 1, what="the actor holding its CPU")
    del holder
    assert anyray.get(refs, timeout=DEADLINE) == [0, 1, 2, 3, 4]
    wait_until(lambda: _free_cpus() == idle, what="the actor's CPU back once no handle is left")


def test_a_handle_inside_a_stored_value_keeps_the_actor_alive():
    holder = CpuHolder.remote()
    assert anyray.get(holder.echo.remote("up"), timeout=DEADLINE) == "up"
    box = anyray.put({"actor": holder})
    del holder
    time.sleep(1.0)  # time for a wrongly dropped actor to be collected
    again = anyray.get(box, timeout=DEADLINE)["actor"]
    assert anyray.get(again.echo.remote("still here"), timeout=DEADLINE) == "still here"


@anyray.remote
class Doomed:
    def pid(self):
        return os.getpid()

    def die(self):
        os.kill(os.getpid(), signals.SIGKILL)

    def ping(self):
        return "pong"


@pytest.mark.requires("processes")
def test_an_actor_whose_process_dies_fails_the_calls_queued_behind():
    actor = Doomed.remote()
    assert anyray.get(actor.pid.remote(), timeout=DEADLINE) != os.getpid()
    dying = actor.die.remote()
    queued = [actor.ping.remote() for _ in range(5)]  # behind die(): they never run
    for ref in [dying, *queued]:
        with pytest.raises(ActorDiedError):
            anyray.get(ref, timeout=DEADLINE)
    with pytest.raises(ActorDiedError):
        anyray.get(actor.ping.remote(), timeout=DEADLINE)
    assert anyray.get(Counter.remote(1).incr.remote(), timeout=DEADLINE) == 2  # the runtime works on
