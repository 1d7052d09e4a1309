"""Where a placement group's bundles go on a cluster (``adapters.cluster.planner.plan``): Ray's rules per
strategy, on the nodes' free resources."""

from __future__ import annotations

import pytest

from anyray.adapters.cluster.planner import plan

TWO = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}}
ONE = [{"CPU": 1.0}]


def test_strict_pack_puts_every_bundle_on_one_node():
    assert plan(ONE * 2, "STRICT_PACK", TWO) == ["a", "a"]
    assert plan(ONE * 2, "STRICT_PACK", {"a": {"CPU": 1.0}, "b": {"CPU": 2.0}}) == ["b", "b"]


def test_strict_pack_larger_than_any_node_cannot_be_placed():
    assert plan(ONE * 3, "STRICT_PACK", TWO) is None
    assert plan([{"CPU": 2.0}] * 2, "STRICT_PACK", TWO) is None


def test_strict_spread_puts_each_bundle_on_a_node_of_its_own():
    assert sorted(plan(ONE * 2, "STRICT_SPREAD", TWO)) == ["a", "b"]
    assert sorted(plan([{"CPU": 2.0}] * 2, "STRICT_SPREAD", TWO)) == ["a", "b"]


def test_strict_spread_with_more_bundles_than_nodes_cannot_be_placed():
    assert plan(ONE * 3, "STRICT_SPREAD", TWO) is None


def test_strict_spread_finds_the_one_assignment_that_works():
    # The GPU bundle must take node b although the CPU bundle, tried first, fits there too.
    nodes = {"b": {"CPU": 1.0, "GPU": 1.0}, "a": {"CPU": 1.0}}
    assert plan([{"CPU": 1.0}, {"GPU": 1.0}], "STRICT_SPREAD", nodes) == ["a", "b"]


def test_pack_uses_one_node_when_it_can_and_as_few_as_it_can_otherwise():
    assert plan(ONE * 2, "PACK", TWO) == ["a", "a"]
    placed = plan(ONE * 3, "PACK", TWO)
    assert sorted(placed) == ["a", "a", "b"]
    placed = plan(ONE * 4, "PACK", TWO)
    assert sorted(placed) == ["a", "a", "b", "b"]
    three = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0}, "c": {"CPU": 2.0}}
    assert len(set(plan(ONE * 3, "PACK", three))) == 2


def test_spread_puts_bundles_on_different_nodes_when_it_can():
    assert sorted(plan(ONE * 2, "SPREAD", TWO)) == ["a", "b"]
    assert sorted(plan([{"CPU": 2.0}] * 2, "SPREAD", TWO)) == ["a", "b"]


def test_spread_with_more_bundles_than_nodes_is_still_placed_evenly():
    assert sorted(plan(ONE * 3, "SPREAD", TWO)) == ["a", "a", "b"]
    assert sorted(plan(ONE * 4, "SPREAD", TWO)) == ["a", "a", "b", "b"]


def test_best_effort_strategies_wait_when_the_bundles_do_not_fit_at_all():
    assert plan(ONE * 5, "PACK", TWO) is None
    assert plan(ONE * 5, "SPREAD", TWO) is None
    assert plan([{"GPU": 1.0}], "PACK", TWO) is None


def test_what_the_nodes_have_free_is_what_counts():
    busy = {"a": {"CPU": 0.5}, "b": {"CPU": 2.0}}
    assert plan(ONE * 2, "PACK", busy) == ["b", "b"]
    assert plan(ONE * 2, "STRICT_SPREAD", busy) is None
    assert plan([{"CPU": 0.5}, {"CPU": 0.5}], "STRICT_SPREAD", busy) is not None


def test_custom_resources_count_like_cpus():
    nodes = {"a": {"CPU": 2.0}, "b": {"CPU": 2.0, "Custom": 2.0}}
    assert plan([{"Custom": 1.0}, {"Custom": 1.0}], "SPREAD", nodes) == ["b", "b"]
    assert plan([{"Custom": 1.0}, {"CPU": 1.0}], "STRICT_PACK", nodes) == ["b", "b"]


def test_the_planner_leaves_its_input_alone():
    nodes = {"a": {"CPU": 2.0}}
    plan(ONE * 2, "PACK", nodes)
    assert nodes == {"a": {"CPU": 2.0}}


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="strategy"):
        plan(ONE, "pack", TWO)
    with pytest.raises(ValueError, match="bundle"):
        plan([], "PACK", TWO)
