"""The local backend: every task and actor in the calling process, on threads.

The reference implementation: the same scheduling rules as every backend,
values copied through the serializer, and ``breakpoint()`` works in tasks.
"""

from __future__ import annotations

from anyray.hookspecs import hookimpl
from anyray.ports.backend import Backend, Capability
from anyray.resources import node_resources

from .. import metrics
from ..common.gaps import LOCAL_GAPS
from ..common.object_store import MemoryObjectStore
from ..common.resources import ResourcePool
from ..metadata import MemoryMetadataStore
from .scheduler import LocalScheduler


class LocalBackend(Backend):
    name = "local"
    description = "everything in the calling process, on threads: breakpoint() and print work in tasks"
    capabilities = frozenset({
        Capability.CONCURRENT, Capability.IN_PROCESS, Capability.ZERO_COPY, Capability.ACTOR_RESTART,
        Capability.INTERRUPT_CANCEL, Capability.TIMELINE, Capability.ERROR_INFO, Capability.RUNTIME_ENV,
    })
    known_gaps = LOCAL_GAPS
    accepted_options = frozenset({"_metrics_export_port"})  # Ray's: serve /metrics (user metrics) on 127.0.0.1
    metrics_server = None

    def start(self) -> None:
        cfg = self.config
        if cfg.address is not None:
            raise ValueError(f"The local backend runs in this process and connects to nothing; "
                             f"drop address={cfg.address!r} or pick backend='cluster'.")
        port = cfg.options.get("_metrics_export_port")
        sock = None if port is None else metrics.driver_socket(port)  # first: a taken port leaves nothing behind
        total, gpu_ids, capacity = node_resources(cfg.num_cpus, cfg.num_gpus, cfg.resources,
                                                  cfg.object_store_memory)
        self.object_store = MemoryObjectStore(capacity)
        self.metadata = MemoryMetadataStore()
        self.pool = ResourcePool(total, gpu_ids)
        self.scheduler = LocalScheduler(self.object_store, self.metadata, self.events, self.pool)
        if sock is not None:
            self.metrics_server = metrics.serve_driver(None, sock)

    def shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown()
            self.metadata.close()

    def info(self) -> dict:
        return {"address": None, "node_id": self.pool.node_id, "dashboard_url": None}


Backend = LocalBackend


@hookimpl
def anyray_backends():
    return [LocalBackend]


__all__ = ["LocalBackend"]
