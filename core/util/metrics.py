"""``ray.util.metrics``: ``Counter``, ``Gauge`` and ``Histogram`` for user code, with Ray's API and checks.

A value recorded anywhere (the driver, a task, an actor) lands in this
process's table (``TABLE``), one series per metric and tag values. Where it
goes from there is the backend's: a worker of a node sends what its table
gathered to its node about once a second (``take``), and the node adds it
to its own table (``merge``), which its Prometheus ``/metrics`` serves
(``anyray.adapters.metrics``) under Ray's names (``ray_<name>``; a Counter
as ``ray_<name>_total``). A backend on an engine with metrics of its own
(Ray) declares ``metric_sink`` and the values go there instead.

This module stays light (no prometheus_client): a worker imports it only
when user code does.
"""

from __future__ import annotations

import bisect
import re
import threading
import warnings

from .. import current as _current

# Prometheus' rule for a metric name (what Ray checks too)
_VALID_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")

COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"


class MetricTable:
    """Series of user metrics: ``(name, tag values) -> value`` (a Counter's sum, a Gauge's last value, a
    Histogram's ``[count per bucket..., count over the last boundary, sum]``), and each metric's definition.
    Thread-safe. A process records into one (``record``) and hands what it gathered on (``take``); a node
    adds the batches of its workers to its own (``merge``)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.definitions: dict[str, tuple] = {}  # name -> (kind, description, tag_keys, boundaries)
        self.series: dict[tuple, object] = {}    # (name, tag values) -> value

    def __bool__(self) -> bool:
        return bool(self.series)

    def record(self, definition: tuple, name: str, tags: tuple, value: float) -> None:
        kind = definition[0]
        key = (name, tags)
        with self._lock:
            if self.definitions.get(name) is not definition:
                self.definitions[name] = definition
            if kind == COUNTER:
                self.series[key] = self.series.get(key, 0) + value
            elif kind == GAUGE:
                self.series[key] = value
            else:
                boundaries = definition[3]
                buckets = self.series.get(key)
                if buckets is None:
                    buckets = self.series[key] = [0] * (len(boundaries) + 1) + [0.0]
                buckets[bisect.bisect_left(boundaries, value)] += 1
                buckets[-1] += value

    def take(self) -> list:
        """What was recorded since the last ``take``, as a batch ``merge`` adds elsewhere; the table is
        empty afterwards (a Counter's or Histogram's values are increments, a Gauge's its last value)."""
        with self._lock:
            series, self.series = self.series, {}
            definitions = self.definitions
        by_name: dict[str, list] = {}
        for (name, tags), value in series.items():
            by_name.setdefault(name, []).append((tags, value))
        return [(name, *definitions[name], rows) for name, rows in by_name.items()]

    def merge(self, batch: list) -> None:
        """Add a batch ``take`` made (in this process or in a worker)."""
        with self._lock:
            for name, kind, description, tag_keys, boundaries, rows in batch:
                known = self.definitions.get(name)
                if known is None or known[0] != kind or len(known[2]) != len(tag_keys) or known[3] != boundaries:
                    # the first definition seen wins, unless another shape replaces it (a new program's)
                    self.definitions[name] = known = (kind, description, tuple(tag_keys), boundaries)
                    for key in [k for k in self.series if k[0] == name]:
                        del self.series[key]
                for tags, value in rows:
                    key = (name, tuple(tags))
                    if kind == COUNTER:
                        self.series[key] = self.series.get(key, 0) + value
                    elif kind == GAUGE:
                        self.series[key] = value
                    else:
                        old = self.series.get(key)
                        self.series[key] = list(value) if old is None else [a + b for a, b in zip(old, value)]

    def snapshot(self) -> tuple[dict, dict]:
        """Copies of the definitions and the series, for a scrape."""
        with self._lock:
            return dict(self.definitions), {k: (list(v) if type(v) is list else v) for k, v in self.series.items()}


TABLE = MetricTable()  # this process's: what its user code recorded, not yet handed on


def _sink():
    """Where values go: the current backend's own metrics (``Backend.metric_sink``), else this process's table."""
    runtime = _current.current_runtime()
    if runtime is not None:
        sink = runtime.backend.metric_sink
        if sink is not None:
            return sink
    return None


def _is_invalid_name(name: str) -> bool:
    if not isinstance(name, str):
        raise TypeError(f"A metric name must be a str, got {type(name).__name__}.")
    if len(name) == 0:
        raise ValueError("Empty name is not allowed. Please provide a metric name.")
    if not _VALID_NAME.match(name):
        warnings.warn(f"Invalid metric name: {name}. Metric will be discarded and data will not be collected or "
                      f"published. Metric names can only contain letters, numbers, _, and :. Metric names cannot "
                      f"start with numbers.", UserWarning, stacklevel=4)
        return True
    return False


def _check_value(value) -> None:
    if not isinstance(value, (int, float)):
        raise TypeError(f"value must be int or float, got {type(value)}.")


class Metric:
    """What ``Counter``, ``Gauge`` and ``Histogram`` share: a name, a description, tag keys and default tags."""

    _kind = ""

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] | None = None):
        self._discard_metric = _is_invalid_name(name)
        self._name = name
        self._description = description
        self._default_tags: dict[str, str] = {}
        self._tag_keys = tag_keys or ()
        if not isinstance(self._tag_keys, tuple):
            raise TypeError(f"tag_keys should be a tuple type, got: {type(self._tag_keys)}")
        for key in self._tag_keys:
            if not isinstance(key, str):
                raise TypeError(f"Tag keys must be str, got {type(key)}.")
        if ":" in name:
            warnings.warn(f"Metric name {name} contains a : character, which is no longer allowed. Please migrate "
                          f"to the new metric name format. This will be an error in the future.", FutureWarning,
                          stacklevel=3)
        self._definition = (self._kind, description, self._tag_keys, None)

    def set_default_tags(self, default_tags: dict[str, str]):
        """Tags used by every record that does not give them; returns the metric itself."""
        for key, val in default_tags.items():
            if key not in self._tag_keys:
                raise ValueError(f"Unrecognized tag key {key}.")
            if not isinstance(val, str):
                raise TypeError(f"Tag values must be str, got {type(val)}.")
        self._default_tags = default_tags
        return self

    def _record(self, value: float, tags: dict[str, str] | None) -> None:
        if self._discard_metric:
            return
        if tags:
            for val in tags.values():
                if not isinstance(val, str):
                    raise TypeError(f"Tag values must be str, got {type(val)}.")
            final = {**self._default_tags, **tags}
        else:
            final = self._default_tags
        missing = [key for key in self._tag_keys if key not in final]
        if missing:
            raise ValueError(f"Missing value for tag key(s): {','.join(missing)}.")
        sink = _sink()
        if sink is not None:
            sink.record(self._kind, self.info, value, final)
        else:
            TABLE.record(self._definition, self._name, tuple(final[k] for k in self._tag_keys), value)

    @property
    def info(self) -> dict:
        """The metric's name, description, tag keys and default tags."""
        return {"name": self._name, "description": self._description, "tag_keys": self._tag_keys,
                "default_tags": self._default_tags}

    def __reduce__(self):
        # as Ray: a metric sent to a task is built again there from its definition (default tags stay behind)
        return self.__class__, (self._name, self._description, self._tag_keys)


class Counter(Metric):
    """A cumulative value that only goes up (Prometheus' counter, exported as ``ray_<name>_total``)."""

    _kind = COUNTER

    def inc(self, value: int | float = 1.0, tags: dict[str, str] | None = None) -> None:
        """Add ``value`` (> 0, default 1); ``tags`` override the default tags."""
        _check_value(value)
        if value <= 0:
            raise ValueError(f"value must be >0, got {value}")
        self._record(value, tags)


class Gauge(Metric):
    """A value that goes up and down; the last one recorded counts (Prometheus' gauge)."""

    _kind = GAUGE

    def set(self, value: int | float | None, tags: dict[str, str] | None = None) -> None:
        """Set the gauge to ``value`` (None does nothing); ``tags`` override the default tags."""
        if value is None:
            return
        _check_value(value)
        self._record(value, tags)


class Histogram(Metric):
    """How many values fell in each bucket, and their sum (Prometheus' histogram); ``boundaries``: the buckets'
    upper bounds, positive, e.g. ``[0.1, 1, 10]``."""

    _kind = HISTOGRAM

    def __init__(self, name: str, description: str = "", boundaries: list[float] | None = None,
                 tag_keys: tuple[str, ...] | None = None):
        super().__init__(name, description, tag_keys)
        if boundaries is None or len(boundaries) == 0:
            raise ValueError("boundaries argument should be provided when using the Histogram class. e.g., "
                             'Histogram("name", boundaries=[1.0, 2.0])')
        for i, boundary in enumerate(boundaries):
            if boundary <= 0:
                raise ValueError(f"Invalid `boundaries` argument at index {i}, {boundaries}. Use positive values "
                                 f"for the arguments.")
        self.boundaries = boundaries
        self._definition = (HISTOGRAM, description, self._tag_keys, tuple(sorted(boundaries)))

    def observe(self, value: int | float, tags: dict[str, str] | None = None) -> None:
        """Count ``value`` in its bucket; ``tags`` override the default tags."""
        _check_value(value)
        self._record(value, tags)

    @property
    def info(self) -> dict:
        return {**super().info, "boundaries": self.boundaries}

    def __reduce__(self):
        return Histogram, (self._name, self._description, self.boundaries, self._tag_keys)


__all__ = ["Counter", "Gauge", "Histogram", "Metric"]
