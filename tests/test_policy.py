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
