"""Scheduling strategies on Dask: node affinity becomes worker restrictions; placement groups are refused.

Each Dask worker is a node. Its node id is a hex digest of its address (56
digits, as long as Ray's), so ``NodeAffinitySchedulingStrategy`` takes it:
``nodes()``, ``get_runtime_context().get_node_id()`` and the state API give
the same id. A strategy naming a live worker becomes Dask's
``workers=[address]``, with ``allow_other_workers=soft`` (Dask then falls
back to any worker only when the named one is gone). A hard strategy naming
no live worker fails the work at once, as Ray does: ``TaskUnschedulableError``
from its results, ``ActorUnschedulableError`` from every call of its actor.
``"DEFAULT"`` and ``"SPREAD"`` leave placement to Dask.

The scheduler declares ``places_groups`` so that the core hands these
strategies over (it refuses them otherwise); placement groups themselves are
not mapped (:class:`NoPlacementGroups` says so), so there are never any.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

from anyray.backend_kit import RemoteFailure, serialize_failure
from anyray.exceptions import ActorUnschedulableError, TaskUnschedulableError
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

from .transport import pack, pack_returns

NO_GROUPS = ("placement groups are not mapped to Dask yet: Dask reserves nothing ahead of the work that uses it "
             "(worker resources are held only while a task runs). Use NodeAffinitySchedulingStrategy to pin work "
             "to a worker, or run on a backend with placement groups (anyray backends lists them)")


def node_id_of(address: str) -> str:
    """The node id (hex) of the Dask worker at ``address``."""
    return hashlib.sha224(address.encode()).hexdigest()


class Placement(NamedTuple):
    """Where Dask may run one task or actor: ``submit`` keywords, or the error it fails with at once."""

    restrictions: dict
    error: BaseException | None = None


ANYWHERE = Placement({})


def place(client, strategy, name: str, actor: bool = False) -> Placement:
    """The placement of work named ``name`` submitted with ``strategy`` (its ``scheduling_strategy`` option)."""
    if type(strategy) is PlacementGroupSchedulingStrategy:
        if strategy.placement_group is None:
            return ANYWHERE  # Ray's "in no group"
        raise NotImplementedError(f"{name}: {NO_GROUPS}.")
    if type(strategy) is not NodeAffinitySchedulingStrategy:
        return ANYWHERE  # None, "DEFAULT", "SPREAD": Dask decides
    for address in client.scheduler_info(n_workers=-1)["workers"]:
        if node_id_of(address) == strategy.node_id:
            return Placement({"workers": [address], "allow_other_workers": strategy.soft})
    if strategy.soft:
        return ANYWHERE
    kind, error = ("actor", ActorUnschedulableError) if actor else ("task", TaskUnschedulableError)
    return Placement({}, error(
        f"The {kind} is not schedulable: {name} was submitted with NodeAffinitySchedulingStrategy(node_id="
        f"{strategy.node_id!r}, soft=False), and no live Dask worker has that node id (anyray.nodes() lists "
        f"them). Pass one of those ids, or soft=True to run elsewhere when the node is gone."))


def failed_payload(error: BaseException):
    """What a Dask task returns for one value that is ``error``."""
    return pack(serialize_failure(RemoteFailure(error)))


class UnschedulableActor:
    """The Dask actor standing in for an anyray actor that can run nowhere: every call fails with its error."""

    def __init__(self, error: BaseException):
        self._error = error

    async def anyray_call(self, call: list, dep_payloads: list):
        n = len(call[4])  # the call's return ids (worker.method_call)
        return pack_returns([serialize_failure(RemoteFailure(self._error))] * n, n)

    async def anyray_kill(self, no_restart: bool) -> None:
        pass

    async def anyray_cancel(self, return_id: bytes) -> None:
        pass

    async def anyray_skip(self, caller_id: bytes, seq: int) -> None:
        pass


class NoPlacementGroups:
    """The PlacementGroupPort of a scheduler without placement groups: creating one raises; none exist."""

    places_groups = True  # the core passes NodeAffinitySchedulingStrategy on only to schedulers declaring it

    def create_placement_group(self, spec):
        raise NotImplementedError(f"placement_group(): {NO_GROUPS}.")

    def remove_placement_group(self, group_id: bytes) -> None:
        raise NotImplementedError(f"remove_placement_group(): {NO_GROUPS}.")

    def placement_group_ready(self, group_id: bytes, ref) -> None:
        raise NotImplementedError(f"PlacementGroup.ready(): {NO_GROUPS}.")

    def wait_placement_group(self, group_id: bytes, timeout: float) -> bool:
        raise NotImplementedError(f"PlacementGroup.wait(): {NO_GROUPS}.")

    def placement_group_table(self, group_id: bytes | None) -> dict:
        if group_id is None:
            return {}  # no group is ever made here
        raise NotImplementedError(f"placement_group_table(): {NO_GROUPS}.")

    def find_placement_group(self, name: str, namespace: str) -> bytes | None:
        return None

    def current_placement_group(self) -> bytes | None:
        return None
