"""Exact accounting of one node's resources, with GPU ids handed to the tasks that hold them."""

from __future__ import annotations

import threading

from anyray import ids
from anyray.policy import EPS, missing


class Lease:
    """What one running task or live actor holds."""

    __slots__ = ("demand", "gpu_ids", "gpu_shares", "cpus_lent", "pool")

    def __init__(self, demand: dict, gpu_shares: list[tuple[int, float]], gpu_ids: list, pool=None):
        self.demand = demand
        self.gpu_shares = gpu_shares
        self.gpu_ids = gpu_ids
        self.cpus_lent = False
        self.pool = pool  # the ResourcePool it came from (a node's, or a placement group bundle's)


class ResourcePool:
    def __init__(self, total: dict[str, float], gpu_ids: list[int]):
        self.node_id = ids.new_id().hex()
        self._total = dict(total)
        self._avail = dict(total)
        self._gpu_ids = list(gpu_ids) or list(range(int(total.get("GPU", 0))))
        self._gpu_free = [1.0] * len(self._gpu_ids)
        self._lock = threading.Lock()

    def infeasible(self, demand: dict) -> dict:
        """The part of ``demand`` this node could never satisfy (empty if feasible)."""
        return missing(demand, self._total)

    def describe_total(self, keys) -> dict:
        return {k: self._total.get(k, 0.0) for k in keys}

    def _gpu_shares(self, amount: float) -> list[tuple[int, float]] | None:
        if amount >= 1:
            whole = [i for i, free in enumerate(self._gpu_free) if free >= 1.0 - EPS]
            need = int(round(amount))
            return [(i, 1.0) for i in whole[:need]] if len(whole) >= need else None
        partial = sorted((free, i) for i, free in enumerate(self._gpu_free) if free >= amount - EPS)
        return [(partial[0][1], amount)] if partial else None  # best fit keeps whole GPUs free

    def acquire(self, demand: dict) -> Lease | None:
        with self._lock:
            avail = self._avail
            for k, v in demand.items():
                if avail.get(k, 0.0) + EPS < v:
                    return None
            shares = []
            gpus = demand.get("GPU", 0)
            if gpus:
                shares = self._gpu_shares(gpus)
                if shares is None:
                    return None
                for i, amount in shares:
                    self._gpu_free[i] -= amount
            for k, v in demand.items():
                avail[k] -= v
            return Lease(demand, shares, [self._gpu_ids[i] for i, _ in shares], self)

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back to the pool it came from (a bundle's lease goes back to its bundle)."""
        if lease.pool is not self and lease.pool is not None:
            lease.pool.release(lease)
            return
        with self._lock:
            for k, v in lease.demand.items():
                if k == "CPU" and lease.cpus_lent:
                    continue
                self._avail[k] += v
            for i, amount in lease.gpu_shares:
                self._gpu_free[i] += amount
            lease.demand = {}
            lease.gpu_shares = []

    def lend_cpus(self, lease: Lease) -> None:
        if lease.pool is not self and lease.pool is not None:
            lease.pool.lend_cpus(lease)
            return
        with self._lock:
            cpus = lease.demand.get("CPU", 0)
            if cpus and not lease.cpus_lent:
                lease.cpus_lent = True
                self._avail["CPU"] += cpus

    def reclaim_cpus(self, lease: Lease) -> None:
        if lease.pool is not self and lease.pool is not None:
            lease.pool.reclaim_cpus(lease)
            return
        with self._lock:
            cpus = lease.demand.get("CPU", 0)
            if lease.cpus_lent:
                lease.cpus_lent = False
                self._avail["CPU"] -= cpus  # may dip below zero for a moment, as in Ray

    def total(self) -> dict[str, float]:
        return {k: v for k, v in self._total.items() if v}

    def available(self) -> dict[str, float]:
        with self._lock:
            return {k: v for k, v in self._avail.items() if v > EPS}


class ReportsResources:
    """The Scheduler port's reads of the resources, from the scheduler's ``resource_view`` (a
    ``NodeResources``)."""

    resource_view: NodeResources

    def cluster_resources(self) -> dict[str, float]:
        return self.resource_view.cluster_resources()

    def available_resources(self) -> dict[str, float]:
        return self.resource_view.available_resources()

    def nodes(self) -> list[dict]:
        return self.resource_view.nodes()


class NodeResources:
    """The resources ``cluster_resources()``, ``available_resources()`` and ``nodes()`` report: one node's
    (a cluster node's view adds the other nodes')."""

    def __init__(self, pool: ResourcePool):
        self.pool = pool

    def cluster_resources(self) -> dict[str, float]:
        return self.pool.total()

    def available_resources(self) -> dict[str, float]:
        return self.pool.available()

    def nodes(self) -> list[dict]:
        return [{"NodeID": self.pool.node_id, "Alive": True, "NodeManagerAddress": "127.0.0.1",
                 "NodeManagerHostname": "localhost", "Resources": self.pool.total(), "alive": True}]

    def infeasible_text(self, name: str, demand: dict, totals: list[dict]) -> str:
        """The infeasible-work warning's words (``policy.Feasibility``): ``totals[0]`` is this machine's."""
        lacking = missing(demand, totals[0])
        return (f"{name} needs {lacking} but this machine has {self.pool.describe_total(lacking)}; "
                f"it will wait until those resources exist (pass them to init(num_gpus=..., resources=...)).")
