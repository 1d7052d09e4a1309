"""The ClusterInfoPort: the resources and nodes of the cluster, and CPUs lent while a task waits."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar


class ClusterInfoPort(ABC):
    """What the cluster holds and what is free.

    Capability: ``lends_cpus = True`` declares :meth:`task_blocked` and
    :meth:`task_unblocked`: a task waiting in ``get``/``wait`` lends its CPUs
    to other tasks. The runtime reads the flag once and never calls them
    otherwise (a backend whose ``get`` lends the CPUs on its own, or that
    cannot lend them, leaves it False).
    """

    lends_cpus: ClassVar[bool] = False

    @abstractmethod
    def cluster_resources(self) -> dict[str, float]:
        """Total resources of all live nodes."""

    @abstractmethod
    def available_resources(self) -> dict[str, float]:
        """Resources not held by running tasks and live actors."""

    @abstractmethod
    def nodes(self) -> list[dict]:
        """One dict per node, with Ray's keys: NodeID, Alive, NodeManagerAddress, Resources."""

    def task_blocked(self) -> None:
        """Optional (``lends_cpus``). The calling task waits in ``get``/``wait``: lend its CPUs to others."""
        raise NotImplementedError(f"{type(self).__name__} declares lends_cpus = False.")

    def task_unblocked(self) -> None:
        """Optional (``lends_cpus``). The calling task resumes: take its CPUs back (may briefly oversubscribe)."""
        raise NotImplementedError(f"{type(self).__name__} declares lends_cpus = False.")
