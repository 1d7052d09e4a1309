"""The retry and restart rules every backend applies (``anyray.policy``), with no processes."""

from __future__ import annotations

import pytest

from anyray.policy import allows_another, call_retry_limit


@pytest.mark.parametrize("limit, used, expected", [
    (0, 0, False), (3, 0, True), (3, 2, True), (3, 3, False), (-1, 0, True), (-1, 10_000, True),
])
def test_allows_another_counts_up_to_the_limit_and_minus_one_means_no_limit(limit, used, expected):
    assert allows_another(limit, used) is expected


@pytest.mark.parametrize("call, actor, expected", [
    ({}, {}, 0),
    ({}, {"max_task_retries": 2}, 2),
    ({"max_task_retries": None}, {"max_task_retries": -1}, -1),
    ({"max_task_retries": 0}, {"max_task_retries": 5}, 0),  # the method's own 0 wins, as in Ray
    ({"max_task_retries": 4}, {"max_task_retries": 1}, 4),
])
def test_a_calls_retry_limit_is_the_methods_else_the_actors(call, actor, expected):
    assert call_retry_limit(call, actor) == expected


def test_fits_and_missing_share_one_tolerance():
    from anyray.policy import fits, missing
    assert fits({"CPU": 0.1 + 0.2}, {"CPU": 0.3})  # 0.30000000000000004 CPUs fit a node of 0.3
    assert fits({}, {}) and fits({"CPU": 1}, {"CPU": 2, "GPU": 1})
    assert not fits({"GPU": 1}, {"CPU": 8})
    assert missing({"CPU": 1, "GPU": 2}, {"CPU": 4, "GPU": 1}) == {"GPU": 2}
    assert missing({"CPU": 0.1 + 0.2}, {"CPU": 0.3}) == {}


def test_feasibility_warns_once_per_key_and_reads_the_nodes_again_when_one_may_have_joined():
    import warnings

    from anyray.exceptions import InfeasibleTaskWarning
    from anyray.policy import Feasibility, engine_text

    nodes = [{"CPU": 2.0}]
    reads = []

    def totals():
        reads.append(1)
        return list(nodes)

    check = Feasibility(totals, engine_text("node", "the test cluster")).check
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check(b"f", "f", {"CPU": 1})
        assert not check(b"g", "g", {"GPU": 1})
        assert not check(b"g", "g", {"GPU": 1})  # the same function: no second warning
    assert [(w.category, w.filename) for w in caught] == [(InfeasibleTaskWarning, __file__)]
    assert "g needs {'GPU': 1} but no node of the test cluster" in str(caught[0].message)
    nodes.append({"CPU": 1.0, "GPU": 1.0})  # a node that has it joins
    assert check(b"g", "g", {"GPU": 1})
    before = len(reads)
    assert check(b"h", "h", {"GPU": 1})  # a shape once seen to fit is not checked again
    assert len(reads) == before
