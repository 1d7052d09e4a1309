"""One node put together: session directory, resource pool, shared-memory store, scheduler and workers.

The multiprocess backend runs one of these in the driver; a cluster node
daemon runs one and lets drivers connect to it.
"""

from __future__ import annotations

import os
import sys

from anyray.resources import node_resources

from ..common.resources import ResourcePool
from ..metrics.node_side import NodeMetrics
from .arena import Arena
from .scheduler import NodeScheduler
from .session import Session
from .spill import clean_stale, spill_root
from .store import INLINE_MAX, SharedObjectStore


class Node:
    """The parts of one node; ``close`` stops its workers and removes its session directory."""

    def __init__(self, *, total: dict, gpu_ids: list, capacity: int, metadata, events, job_id: bytes,
                 namespace: str, scheduler_cls: type[NodeScheduler] = NodeScheduler, spill_dir: str | None = None):
        """``spill_dir``: where the store spills objects when shared memory is full (None: it raises)."""
        self.pool = ResourcePool(total, gpu_ids)
        self.node_id = self.pool.node_id
        self.session = Session()
        self.scheduler = None
        try:
            self.arena = Arena.create(self.session, capacity)
            clean_stale(spill_dir)  # what nodes that died spilling there left behind
            self.store = SharedObjectStore(self.arena, INLINE_MAX, spill_dir)
            self.setup = {"job_id": job_id, "namespace": namespace, "node_id": self.node_id,
                          "arena": self.arena.path, "inline_max": INLINE_MAX, "sys_path": list(sys.path),
                          "cwd": os.getcwd(), "spilling": spill_dir is not None}
            self.scheduler = scheduler_cls(self.session, self.store, metadata, events, self.pool, self.setup)
            self.metrics = NodeMetrics(self.scheduler)  # what its /metrics serves (adapters/metrics)
        except BaseException:
            self.session.close()
            raise

    @classmethod
    def from_config(cls, cfg, metadata, events, scheduler_cls: type[NodeScheduler] = NodeScheduler) -> Node:
        """The node a backend's ``init`` options describe (CPUs, GPUs, resources, store size)."""
        total, gpu_ids, capacity = node_resources(cfg.num_cpus, cfg.num_gpus, cfg.resources, cfg.object_store_memory)
        spill_dir = spill_root(cfg.options.get("_system_config"))
        return cls(total=total, gpu_ids=gpu_ids, capacity=capacity, metadata=metadata, events=events,
                   job_id=cfg.job_id, namespace=cfg.namespace, scheduler_cls=scheduler_cls, spill_dir=spill_dir)

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown()
            self.store.close()
            self.arena.close()
        self.session.close()
