"""The StatePort on Dask: the cluster's worker processes, from the Dask scheduler's worker table.

Actors, tasks and objects are not listed yet: anyray's actors live inside Dask actors and its objects in
Dask's keys, and nothing maps them back to anyray's ids (the conformance suite lists these as gaps).
"""

from __future__ import annotations

import os

from .placement import node_id_of


class DaskState:
    """The StatePort (``anyray.ports.StatePort``) of the Dask scheduler: ``self._client`` is its Dask client."""

    lists_state = True

    def list_state(self, kind: str) -> list[dict]:
        if kind == "workers":
            workers = self._client.scheduler_info(n_workers=-1)["workers"]
            pids = self._client.run(os.getpid)  # {worker address: the pid of its process}
            return [{"worker_id": w.get("id", address), "worker_type": "WORKER", "is_alive": True,
                     "pid": pids.get(address), "ip": w.get("host"), "node_id": node_id_of(address)}
                    for address, w in workers.items()]
        raise NotImplementedError(f"The dask backend does not list {kind} yet: anyray's {kind} live in Dask's "
                                  f"own (actors, keys), and nothing maps them back to anyray's ids.")
