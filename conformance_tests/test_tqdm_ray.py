"""``ray.experimental.tqdm_ray``: the ``tqdm`` that tasks and actors use, as Ray's.

Proves, as Ray 2.x behaves: iterating a bar goes through its iterable, one step per item, and takes the total
from its ``len()``; ``update``, ``n`` and ``total`` count steps in a task and in an actor; ``set_description``,
``refresh`` and ``close`` work there; a bar with nothing to iterate says so (``ValueError``); ``safe_print``
to a file of the caller's is plain ``print``.
"""

from __future__ import annotations

import io

import pytest

import anyray
from anyray.experimental.tqdm_ray import safe_print, tqdm

pytestmark = pytest.mark.usefixtures("anyray_session")


@anyray.remote
def go_through(items, sized=True):
    bar = tqdm(items if sized else iter(items), desc="items", flush_interval_s=0)
    seen = list(bar)
    return seen, bar.n, bar.total


@anyray.remote
class Stepper:
    def __init__(self):
        self.bar = tqdm(desc="steps", total=10, unit="step")

    def step(self, n):
        self.bar.update(n)
        return self.bar.n

    def finish(self):
        self.bar.set_description("steps done")
        self.bar.total = 12
        self.bar.refresh()
        self.bar.close()
        return self.bar.n, self.bar.total


def test_a_bar_in_a_task_goes_through_its_iterable_and_counts_its_items():
    assert anyray.get(go_through.remote([3, 1, 2])) == ([3, 1, 2], 3, 3)
    assert anyray.get(go_through.remote("ab", sized=False)) == (["a", "b"], 2, None)  # no len(): no total


def test_a_bar_in_an_actor_counts_updates_and_closes():
    stepper = Stepper.remote()
    assert anyray.get([stepper.step.remote(4), stepper.step.remote(3)]) == [4, 7]
    assert anyray.get(stepper.finish.remote()) == (7, 12)


def test_a_bar_without_an_iterable_cannot_be_iterated():
    with pytest.raises(ValueError):
        list(tqdm(total=3))


def test_safe_print_to_a_file_of_the_caller_s_is_print():
    out = io.StringIO()
    safe_print("hello", 1, file=out)
    assert out.getvalue() == "hello 1\n"
