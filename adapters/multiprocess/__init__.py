"""The multiprocess backend: one machine, worker processes, a shared-memory object store.

The driver hosts the scheduler and the object table; tasks run in worker
processes forked on demand by the session's fork server, each actor in a
process of its own; objects of 100 KiB and more live in one shared-memory
arena that every process maps, so NumPy arrays and Arrow buffers are read
without a copy. Everything lives in one session directory that is removed
when the driver ends, however it ends (see ``anyray.adapters.node``).
"""

from __future__ import annotations

import sys

from anyray.hookspecs import hookimpl
from anyray.ports.backend import Backend, Capability

from .. import metrics
from ..common.gaps import MULTIPROCESS_GAPS
from ..metadata import MemoryMetadataStore
from ..node.node import Node
from ..node.scheduler import GroupNodeScheduler


class MultiprocessBackend(Backend):
    name = "multiprocess"
    description = "worker processes on this machine, a shared-memory object store (the default)"
    capabilities = frozenset({
        Capability.CONCURRENT, Capability.PROCESSES, Capability.ZERO_COPY, Capability.WORKER_RESTART,
        Capability.ACTOR_RESTART, Capability.FORCE_CANCEL, Capability.INTERRUPT_CANCEL, Capability.TIMELINE,
        Capability.ERROR_INFO, Capability.RUNTIME_ENV,
        Capability.RUNTIME_ENV_PIP,
    })
    known_gaps = MULTIPROCESS_GAPS
    # Ray's: serve /metrics on 127.0.0.1:PORT; log_to_driver=False: nothing workers write shows here
    accepted_options = frozenset({"_metrics_export_port", "log_to_driver"})
    metrics_server = None

    def start(self) -> None:
        cfg = self.config
        if cfg.address is not None:
            raise ValueError(f"The multiprocess backend runs on this machine and connects to nothing; "
                             f"drop address={cfg.address!r} or pick backend='cluster'.")
        port = cfg.options.get("_metrics_export_port")
        sock = None if port is None else metrics.driver_socket(port)  # first: a taken port leaves nothing behind
        self.metadata = MemoryMetadataStore()
        self.node = Node.from_config(cfg, self.metadata, self.events, scheduler_cls=GroupNodeScheduler)
        self.node.setup["log_to_driver"] = cfg.options.get("log_to_driver", True)  # read by each new worker
        # on a terminal, what workers print goes through this process, which prints it above any progress bars
        self.node.setup["output_via_driver"] = _is_terminal(sys.stdout)
        self.scheduler = self.node.scheduler
        self.object_store = self.node.store
        if sock is not None:
            self.metrics_server = metrics.serve_driver(self.node, sock)

    def shutdown(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        node = getattr(self, "node", None)
        if node is not None:
            node.close()
            self.metadata.close()

    def info(self) -> dict:
        return {"address": None, "node_id": self.node.node_id, "dashboard_url": None}


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


Backend = MultiprocessBackend


@hookimpl
def anyray_backends():
    return [MultiprocessBackend]


__all__ = ["MultiprocessBackend"]
