"""The multiprocess backend: one machine, worker processes, a shared-memory object store.

The driver hosts the scheduler and the object table; tasks run in worker
processes forked on demand by the session's fork server, each actor in a
process of its own; objects of 100 KiB and more live in one shared-memory
arena that every process maps, so NumPy arrays and Arrow buffers are read
without a copy. Everything lives in one session directory that is removed
when the driver ends, however it ends (see ``anyray.adapters.node``).
"""

from __future__ import annotations

import os
import sys

from anyray.hookspecs import hookimpl
from anyray.ports.backend import Backend, Capability
from anyray.resources import node_resources

from ..common.resources import ResourcePool
from ..metadata import MemoryMetadataStore
from ..node.arena import Arena
from ..node.scheduler import NodeScheduler
from ..node.session import Session
from ..node.store import INLINE_MAX, SharedObjectStore


class MultiprocessBackend(Backend):
    name = "multiprocess"
    description = "worker processes on this machine, a shared-memory object store (the default)"
    capabilities = frozenset({
        Capability.CONCURRENT, Capability.PROCESSES, Capability.ZERO_COPY, Capability.WORKER_RESTART,
        Capability.ACTOR_RESTART, Capability.FORCE_CANCEL, Capability.INTERRUPT_CANCEL, Capability.TIMELINE,
        Capability.ERROR_INFO,
    })

    def start(self) -> None:
        cfg = self.config
        if cfg.address is not None:
            raise ValueError(f"The multiprocess backend runs on this machine and connects to nothing; "
                             f"drop address={cfg.address!r} or pick backend='cluster'.")
        total, gpu_ids, capacity = node_resources(cfg.num_cpus, cfg.num_gpus, cfg.resources,
                                                  cfg.object_store_memory)
        self.pool = ResourcePool(total, gpu_ids)
        self.session = Session()
        try:
            self.arena = Arena.create(self.session, capacity)
            self.object_store = SharedObjectStore(self.arena, INLINE_MAX)
            self.metadata = MemoryMetadataStore()
            setup = {"job_id": cfg.job_id, "namespace": cfg.namespace, "node_id": self.pool.node_id,
                     "arena": self.arena.path, "inline_max": INLINE_MAX, "sys_path": list(sys.path),
                     "cwd": os.getcwd()}
            self.scheduler = NodeScheduler(self.session, self.object_store, self.metadata, self.events,
                                           self.pool, setup)
        except BaseException:
            self.session.close()
            raise

    def shutdown(self) -> None:
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:
            scheduler.shutdown()
            self.metadata.close()
            self.object_store.close()
            self.arena.close()
        session = getattr(self, "session", None)
        if session is not None:
            session.close()

    def info(self) -> dict:
        return {"address": None, "node_id": self.pool.node_id, "dashboard_url": None}


Backend = MultiprocessBackend


@hookimpl
def anyray_backends():
    return [MultiprocessBackend]


__all__ = ["MultiprocessBackend"]
