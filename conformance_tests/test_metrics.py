"""``ray.util.metrics``: ``Counter``, ``Gauge`` and ``Histogram`` for user code.

Proves, as Ray 2.x behaves: each metric records with its default tags or the tags a call gives (which win),
in the driver, in tasks (a metric made in the driver travels to the task) and in actors; ``set_default_tags``
returns the metric itself; ``info`` tells the name, description, tag keys, default tags (and a Histogram's
boundaries); a Gauge set to None records nothing.

Bad input, as Ray: an empty name is a ``ValueError``; a name Prometheus refuses warns (``UserWarning``) and
the metric records nothing; tag keys that are not a tuple of str, a default tag not among the keys or not a
str, a tag value that is not a str, a missing tag, a value that is not a number, a Counter increment that is
not > 0, a Histogram without boundaries or with one that is not > 0: each raises at the call.
(Where the values are served, a node's Prometheus /metrics, is tested in tests/test_metrics.py.)
"""

from __future__ import annotations

import warnings

import pytest

import anyray
from anyray.util.metrics import Counter, Gauge, Histogram

pytestmark = pytest.mark.usefixtures("anyray_session")


def test_each_metric_records_with_default_tags_or_the_tags_given():
    counter = Counter("conformance_requests", description="requests", tag_keys=("route", "code"))
    assert counter.set_default_tags({"route": "/"}) is counter
    counter.inc(tags={"code": "200"})
    counter.inc(2.5, tags={"route": "/other", "code": "500"})
    gauge = Gauge("conformance_queue_depth", tag_keys=("queue",)).set_default_tags({"queue": "a"})
    gauge.set(3)
    gauge.set(1.5, tags={"queue": "b"})
    gauge.set(None)  # records nothing
    histogram = Histogram("conformance_latency_s", "latency", boundaries=[0.1, 1.0, 10.0])
    for value in (0.05, 0.5, 5, 50):
        histogram.observe(value)
    assert counter.info == {"name": "conformance_requests", "description": "requests",
                            "tag_keys": ("route", "code"), "default_tags": {"route": "/"}}
    assert histogram.info["boundaries"] == [0.1, 1.0, 10.0]
    assert Gauge("conformance_untagged").info["tag_keys"] == ()


@anyray.remote
def count_in_task(counter, n):
    for _ in range(n):
        counter.inc(tags={"where": "task"})
    Histogram("conformance_task_sizes", boundaries=[1, 10]).observe(n)
    return n


@anyray.remote
class Recorder:
    def __init__(self):
        self.gauge = Gauge("conformance_actor_level", tag_keys=("actor",)).set_default_tags({"actor": "one"})

    def record(self, value):
        self.gauge.set(value)
        Counter("conformance_actor_calls").inc()
        return value


def test_metrics_record_in_tasks_and_actors():
    counter = Counter("conformance_task_items", tag_keys=("where",))
    assert anyray.get([count_in_task.remote(counter, n) for n in (1, 2, 3)]) == [1, 2, 3]
    recorder = Recorder.remote()
    assert anyray.get([recorder.record.remote(v) for v in (1, 2.5)]) == [1, 2.5]


@anyray.remote
def bad_tag_in_task(counter):
    try:
        counter.inc(tags={"where": 1})
    except TypeError as exc:
        return str(exc)
    return "no error"


def test_a_bad_tag_in_a_task_raises_there():
    counter = Counter("conformance_bad", tag_keys=("where",))
    assert "Tag values must be str" in anyray.get(bad_tag_in_task.remote(counter))


def test_bad_names_and_tag_keys_raise_or_warn_as_ray():
    with pytest.raises(ValueError, match="Empty name is not allowed"):
        Counter("")
    with pytest.warns(UserWarning, match="Invalid metric name: 1bad"):
        discarded = Counter("1bad")
    discarded.inc()  # discarded: records nothing, raises nothing
    with pytest.raises(TypeError, match="tag_keys should be a tuple type"):
        Counter("conformance_list_keys", tag_keys=["a"])
    with pytest.raises(TypeError, match="Tag keys must be str"):
        Gauge("conformance_int_keys", tag_keys=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a colon is valid for Prometheus: no UserWarning
        with pytest.warns(FutureWarning, match="contains a : character"):
            Gauge("conformance:colon")


def test_bad_tags_and_values_raise_as_ray():
    counter = Counter("conformance_checked", tag_keys=("a",))
    with pytest.raises(ValueError, match="Unrecognized tag key b"):
        counter.set_default_tags({"b": "x"})
    with pytest.raises(TypeError, match="Tag values must be str"):
        counter.set_default_tags({"a": 1})
    with pytest.raises(ValueError, match="Missing value for tag key"):
        counter.inc()
    with pytest.raises(TypeError, match="Tag values must be str"):
        counter.inc(tags={"a": 2})
    with pytest.raises(TypeError, match="value must be int or float"):
        counter.inc("1", tags={"a": "x"})
    with pytest.raises(ValueError, match="value must be >0"):
        counter.inc(0, tags={"a": "x"})
    with pytest.raises(ValueError, match="value must be >0"):
        counter.inc(-1, tags={"a": "x"})
    with pytest.raises(TypeError, match="value must be int or float"):
        Gauge("conformance_gauge_checked").set("high")
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("conformance_no_buckets")
    with pytest.raises(ValueError, match="boundaries argument should be provided"):
        Histogram("conformance_empty_buckets", boundaries=[])
    with pytest.raises(ValueError, match="Invalid `boundaries` argument at index 1"):
        Histogram("conformance_bad_buckets", boundaries=[1, 0])
    with pytest.raises(TypeError, match="value must be int or float"):
        Histogram("conformance_checked_s", boundaries=[1]).observe(None)
