"""``ray.util.metrics`` on Ray: the values user code records go to Ray's own metrics, so Ray's /metrics (its
metrics agent on each node) exports them as it exports a Ray program's (``RayBackend.metric_sink``)."""

from __future__ import annotations

import threading

_RECORD = {"counter": "inc", "gauge": "set", "histogram": "observe"}


class RayMetrics:
    """One Ray metric per anyray metric name and kind, made on its first value."""

    def __init__(self):
        self._metrics: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, info: dict, value, tags: dict) -> None:
        key = (kind, info["name"])
        metric = self._metrics.get(key)
        if metric is None:
            with self._lock:
                metric = self._metrics.get(key)
                if metric is None:
                    metric = self._metrics[key] = self._make(kind, info)
        getattr(metric, _RECORD[kind])(value, tags=tags)

    @staticmethod
    def _make(kind: str, info: dict):
        from ray.util import metrics

        if kind == "histogram":
            return metrics.Histogram(info["name"], info["description"], info["boundaries"], info["tag_keys"])
        cls = metrics.Counter if kind == "counter" else metrics.Gauge
        return cls(info["name"], info["description"], info["tag_keys"])
