"""The Prometheus collector of one node: read from the node's parts at each scrape, nothing counted per task
but what ``node_side`` keeps.

Names are Ray's where Ray has the metric (``ray_tasks``, ``ray_actors``, ``ray_resources``,
``ray_object_store_memory``, ``ray_object_store_num_local_objects``, ``ray_placement_groups``, and the
user's metrics as ``ray_<name>``), with Ray's label names and state words; the others are ``anyray_``.
"""

from __future__ import annotations

import collections

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from anyray.util.metrics import COUNTER, GAUGE

from ..node.introspection import ACTOR_STATES, TASK_STATES


def _buckets(boundaries, counts) -> list:
    """Cumulative ``(le, count)`` pairs, as Prometheus' histogram wants them."""
    out, total = [], 0
    for bound, count in zip((*map(float, boundaries), float("inf")), counts):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


def user_families(definitions: dict, series: dict) -> list:
    """The user's ``ray.util.metrics`` series as Ray exports them: ``ray_<name>``."""
    rows: dict[str, list] = {}
    for (name, tags), value in series.items():
        rows.setdefault(name, []).append((tags, value))
    out = []
    for name, (kind, description, tag_keys, boundaries) in definitions.items():
        labels = list(tag_keys)
        full = f"ray_{name}"
        if kind == COUNTER:
            family = CounterMetricFamily(full, description, labels=labels)
            for tags, value in rows.get(name, ()):
                family.add_metric(list(tags), value)
        elif kind == GAUGE:
            family = GaugeMetricFamily(full, description, labels=labels)
            for tags, value in rows.get(name, ()):
                family.add_metric(list(tags), value)
        else:
            family = HistogramMetricFamily(full, description, labels=labels)
            for tags, value in rows.get(name, ()):
                family.add_metric(list(tags), _buckets(boundaries, value[:-1]), value[-1])
        out.append(family)
    return out


def counted(name: str, description: str, labels: list, pairs) -> GaugeMetricFamily:
    """A gauge of the sum of ``n`` for each label values ``key`` in ``pairs`` (``(key, n)``), in key order."""
    counts: collections.Counter = collections.Counter()
    for key, n in pairs:
        counts[key] += n
    family = GaugeMetricFamily(name, description, labels=labels)
    for key, n in sorted(counts.items()):
        family.add_metric(list(key), n)
    return family


class NodeCollector(Collector):
    """Everything one node's ``/metrics`` shows, gathered when Prometheus asks."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        node = self.node
        scheduler = node.scheduler
        metrics = node.metrics
        labels = {"NodeId": str(node.node_id)}
        yield counted("ray_tasks", "Current number of tasks currently in a particular state (FINISHED and FAILED: "
                      "since the node started).", ["State", "Name"], self._task_counts(scheduler, metrics))
        yield counted("ray_actors", "Current number of actors currently in a particular state.", ["State", "Name"],
                      self._actor_counts(scheduler))
        yield from self._resources(node.pool)
        yield from self._store(node.store)
        yield from self._workers(scheduler)
        if metrics.reports_groups and scheduler.groups is not None:
            groups = GaugeMetricFamily("ray_placement_groups", "Number of placement groups broken down by state.",
                                       labels=["State"])
            counts: dict[str, int] = {}
            for row in scheduler.groups.table(None).values():
                counts[row["state"]] = counts.get(row["state"], 0) + 1
            for state in ("PENDING", "CREATED", "REMOVED", *sorted(set(counts) - {"PENDING", "CREATED", "REMOVED"})):
                groups.add_metric([state], counts.get(state, 0))
            yield groups
        buckets, total = metrics.latency.snapshot()
        latency = HistogramMetricFamily(
            "anyray_scheduling_latency_seconds", "Seconds from a task's submission on this node to its start on a "
            "worker (waiting for its arguments and for resources included).", labels=["NodeId"])
        latency.add_metric([labels["NodeId"]], _buckets(metrics.latency.boundaries, buckets), total)
        yield latency
        yield from user_families(*metrics.user_snapshot())

    @staticmethod
    def _task_counts(scheduler, metrics):
        """``((state, name), n)`` for this node's tasks: queued and running ones, actor calls, and those that
        ended since the node started."""
        seen = {id(t): t for t in list(scheduler.tasks.tasks.values()) if t.node is None}  # one per task
        for task in seen.values():
            if task.state != "done":
                yield (TASK_STATES.get(task.state, task.state.upper()), task.spec.name), 1
        for actor in list(scheduler.actors.actors.values()):
            for state, calls in (("SUBMITTED_TO_WORKER", list(actor.inflight.values())),
                                 ("PENDING_NODE_ASSIGNMENT", list(actor.buffered))):
                for call in calls:
                    yield (state, call.name), 1
        for (name, failed), n in list(metrics.finished.counts.items()):
            yield ("FAILED" if failed else "FINISHED", name), n

    @staticmethod
    def _actor_counts(scheduler):
        for actor in list(scheduler.actors.actors.values()):
            yield (ACTOR_STATES.get(actor.state, actor.state.upper()), actor.spec.cls.name), 1

    @staticmethod
    def _resources(pool):
        family = GaugeMetricFamily("ray_resources", "Logical resources of this node by state (AVAILABLE, USED).",
                                   labels=["Name", "State"])
        total, available = pool.total(), pool.available()
        for name in sorted(total):
            free = available.get(name, 0.0)
            family.add_metric([name, "AVAILABLE"], free)
            family.add_metric([name, "USED"], total[name] - free)
        yield family

    @staticmethod
    def _store(store):
        usage = store.usage()
        shared = usage.get("shared_bytes", 0)
        memory = GaugeMetricFamily("ray_object_store_memory", "Object store memory by location on this node "
                                   "(MMAP_SHM: in shared memory; WORKER_HEAP: small objects kept inline; SPILLED: "
                                   "on disk).", labels=["Location", "ObjectState"])
        memory.add_metric(["MMAP_SHM", "SEALED"], shared)
        memory.add_metric(["WORKER_HEAP", "SEALED"], max(usage.get("bytes", 0) - shared, 0))
        memory.add_metric(["SPILLED", "SEALED"], usage.get("spilled_bytes", 0))
        yield memory
        yield GaugeMetricFamily("ray_object_store_num_local_objects", "Number of objects in this node's store.",
                                value=usage.get("objects", 0))
        yield GaugeMetricFamily("ray_object_store_used_memory", "Bytes of objects in this node's store.",
                                value=usage.get("bytes", 0))
        capacity = usage.get("capacity")
        if capacity is not None:
            yield GaugeMetricFamily("ray_object_store_available_memory", "Bytes of shared memory left for objects "
                                    "on this node.", value=max(capacity - shared, 0))
        yield GaugeMetricFamily("anyray_object_store_spilled_objects", "Objects of this node's store spilled to "
                                "disk.", value=usage.get("spilled_objects", 0))

    @staticmethod
    def _workers(scheduler):
        family = GaugeMetricFamily("anyray_workers", "Processes linked to this node by kind: IDLE and BUSY task "
                                   "workers, ACTOR workers, DRIVER connections, other NODE connections.",
                                   labels=["State"])
        counts = {"IDLE": 0, "BUSY": 0, "ACTOR": 0, "DRIVER": 0, "NODE": 0}
        for worker in list(scheduler.supervision.workers.values()):
            if worker.dead:
                continue
            if worker.peer:
                counts["NODE"] += 1
            elif worker.handle.adopted:
                counts["DRIVER"] += 1
            elif worker.actor is not None:
                counts["ACTOR"] += 1
            else:
                counts["BUSY" if worker.task is not None else "IDLE"] += 1
        for state, n in counts.items():
            family.add_metric([state], n)
        yield family
