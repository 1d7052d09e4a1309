"""Concurrency groups of actors: ``@remote(concurrency_groups={...})``, ``@method(concurrency_group=...)``
and a call's ``.options(concurrency_group=...)``.

Proves, as Ray 2.x behaves, for threaded and async actors: the calls of a group run at most the group's
size at once (a group of 2 holds exactly 2 blocked calls, the others wait), independently of the other
groups (a call of another group, or of the default group, runs while a group is full); the default
group's size is ``max_concurrency``; a call's ``.options(concurrency_group=...)`` runs it in that group
instead of its method's. Concurrency is observed with a gauge actor the calls report to and a signal
they block on, never with timings.

Bad input: an unknown group (in ``@method`` or in a call's options) is a ``ValueError`` that names the
actor's groups -- Ray raises a bare ``AssertionError`` at ``Cls.remote()`` for the first and kills the
actor for the second; a group size that is not a positive int is a ``TypeError``/``ValueError``.
"""

from __future__ import annotations

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, wait_until

pytestmark = pytest.mark.usefixtures("anyray_session")


@anyray.remote
class Gauge:
    """How many calls of each group are inside at once, and the most there ever were."""

    def __init__(self):
        self.now: dict = {}
        self.most: dict = {}

    def enter(self, group):
        self.now[group] = self.now.get(group, 0) + 1
        self.most[group] = max(self.most.get(group, 0), self.now[group])

    def leave(self, group):
        self.now[group] -= 1

    def inside(self, group):
        return self.now.get(group, 0)

    def most_at_once(self, group):
        return self.most.get(group, 0)


@anyray.remote(concurrency_groups={"io": 2, "compute": 1})
class Threaded:
    @anyray.method(concurrency_group="io")
    def io(self, gauge, signal, group="io"):
        anyray.get(gauge.enter.remote(group))
        anyray.get(signal.wait.remote())
        anyray.get(gauge.leave.remote(group))
        return group

    @anyray.method(concurrency_group="compute")
    def compute(self):
        return "compute"

    def default(self, gauge=None, signal=None):
        if gauge is not None:
            anyray.get(gauge.enter.remote("default"))
            anyray.get(signal.wait.remote())
            anyray.get(gauge.leave.remote("default"))
        return "default"


@anyray.remote(concurrency_groups={"io": 2, "compute": 1})
class Async:
    @anyray.method(concurrency_group="io")
    async def io(self, gauge, signal, group="io"):
        await gauge.enter.remote(group)
        await signal.wait.remote()
        await gauge.leave.remote(group)
        return group

    @anyray.method(concurrency_group="compute")
    async def compute(self):
        return "compute"

    async def default(self):
        return "default"


def _inside(gauge, group):
    return anyray.get(gauge.inside.remote(group), timeout=DEADLINE)


@pytest.mark.parametrize("cls", [Threaded, Async], ids=["threaded", "async"])
def test_a_group_runs_its_size_of_calls_at_once_and_the_other_groups_run_meanwhile(cls, signal):
    actor, gauge = cls.remote(), Gauge.remote()
    refs = [actor.io.remote(gauge, signal) for _ in range(5)]
    wait_until(lambda: _inside(gauge, "io") == 2, what="two io calls inside")
    # the io group is full: calls of the other groups still run to the end
    assert anyray.get(actor.compute.remote(), timeout=DEADLINE) == "compute"
    assert anyray.get(actor.default.remote(), timeout=DEADLINE) == "default"
    ready, _ = anyray.wait(refs, num_returns=len(refs), timeout=0)
    assert ready == [] and _inside(gauge, "io") == 2  # the other three wait for a place in the group
    signal.send.remote()
    assert anyray.get(refs, timeout=DEADLINE) == ["io"] * 5
    assert anyray.get(gauge.most_at_once.remote("io"), timeout=DEADLINE) == 2


@pytest.mark.parametrize("cls", [Threaded, Async], ids=["threaded", "async"])
def test_a_calls_options_run_it_in_another_group(cls, signal):
    actor, gauge = cls.remote(), Gauge.remote()
    held = [actor.io.remote(gauge, signal) for _ in range(2)]
    wait_until(lambda: _inside(gauge, "io") == 2, what="the io group full")
    # the same method, in the compute group, does not wait for the full io group
    moved = actor.io.options(concurrency_group="compute").remote(gauge, signal, "compute")
    wait_until(lambda: _inside(gauge, "compute") == 1, what="the call moved to compute running")
    signal.send.remote()
    assert anyray.get([*held, moved], timeout=DEADLINE) == ["io", "io", "compute"]


def test_the_default_groups_size_is_max_concurrency(signal):
    actor, gauge = Threaded.options(max_concurrency=3).remote(), Gauge.remote()
    refs = [actor.default.remote(gauge, signal) for _ in range(4)]
    wait_until(lambda: _inside(gauge, "default") == 3, what="three default-group calls inside")
    assert anyray.get(actor.compute.remote(), timeout=DEADLINE) == "compute"
    assert _inside(gauge, "default") == 3
    signal.send.remote()
    assert anyray.get(refs, timeout=DEADLINE) == ["default"] * 4
    assert anyray.get(gauge.most_at_once.remote("default"), timeout=DEADLINE) == 3


def test_a_default_group_of_one_runs_its_calls_in_order_while_a_group_runs():
    actor = Threaded.remote()
    assert anyray.get([actor.default.remote() for _ in range(3)] + [actor.compute.remote()],
                      timeout=DEADLINE) == ["default"] * 3 + ["compute"]


@pytest.mark.parametrize("cls", [Threaded, Async], ids=["threaded", "async"])
def test_calls_of_every_group_made_before_the_last_handle_is_dropped_still_run(cls, signal):
    actor, gauge = cls.remote(), Gauge.remote()
    refs = [actor.io.remote(gauge, signal) for _ in range(3)] + [actor.compute.remote(), actor.default.remote()]
    wait_until(lambda: _inside(gauge, "io") == 2, what="the io group full")
    del actor  # the calls already made run to the end, in every group
    signal.send.remote()
    assert anyray.get(refs, timeout=DEADLINE) == ["io", "io", "io", "compute", "default"]


# -- bad input -------------------------------------------------------------------------------------


def test_a_method_in_an_undeclared_group_is_refused_when_the_actor_is_created():
    @anyray.remote(concurrency_groups={"io": 2})
    class Misgrouped:
        @anyray.method(concurrency_group="nope")
        def f(self):
            return 1

    # Ray raises a bare AssertionError here; anyray says which group and which there are
    with pytest.raises(ValueError, match="nope"):
        Misgrouped.remote()


def test_a_call_in_an_unknown_group_is_refused_at_the_call_site():
    actor = Threaded.remote()
    with pytest.raises(ValueError, match="unknown concurrency group 'nope'"):
        actor.compute.options(concurrency_group="nope").remote()
    assert anyray.get(actor.compute.remote(), timeout=DEADLINE) == "compute"  # the actor lives on


@pytest.mark.parametrize("groups, error", [({"io": "2"}, TypeError), ({1: 2}, TypeError), (["io"], TypeError),
                                           ({"io": 0}, ValueError), ({"io": -1}, ValueError)])
def test_a_bad_group_size_is_refused(groups, error):
    with pytest.raises(error):
        @anyray.remote(concurrency_groups=groups)
        class Bad:
            def f(self):
                return 1

        Bad.remote()


def test_an_actor_classs_groups_are_not_an_option_of_options():
    with pytest.raises(ValueError, match="concurrency_groups"):
        Threaded.options(concurrency_groups={"io": 1})


def test_a_task_has_no_concurrency_group():
    @anyray.remote
    def f():
        return 1

    with pytest.raises(ValueError, match="concurrency_group"):
        f.options(concurrency_group="io")
