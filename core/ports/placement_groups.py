"""The PlacementGroupPort: reserves bundles of resources as a unit, and tells where they are."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..object_ref import ObjectRef


@dataclass(frozen=True)
class PlacementGroupSpec:
    """A group the core has validated (``anyray.util.placement_group.placement_group``)."""

    bundles: list[dict[str, float]]   # non-empty; each a non-empty dict of resource name to amount >= 0
    strategy: str                     # "PACK", "SPREAD", "STRICT_PACK" or "STRICT_SPREAD"
    name: str                         # "" for an unnamed group
    namespace: str                    # where ``name`` is looked up (the job's namespace)
    lifetime: str | None              # None (ends with the job that made it) or "detached"
    max_cpu_fraction_per_node: float | None = None  # Ray 2.x < 2.10's option; None when not given


class PlacementGroupPort:
    """Placement groups, as Ray has them. Optional: a scheduler declares ``places_groups = True``.

    A group's bundles are reserved all or nothing, each on one node (placed by
    the group's strategy); a bundle's resources are then used only by tasks and
    actors scheduled into it (``scheduling_strategy=PlacementGroupSchedulingStrategy``
    in their options, which reach ``submit_task`` and ``create_actor``
    unchanged), and are gone from ``available_resources()``. A group that
    cannot be placed yet stays pending and is placed once it fits. Group ids
    are the backend's (``bytes``); every method may be called from any thread,
    inside tasks too. The runtime reads ``places_groups`` once and never calls
    these methods otherwise.
    """

    places_groups: ClassVar[bool] = False

    def create_placement_group(self, spec: PlacementGroupSpec) -> bytes:
        """Start reserving ``spec``'s bundles and return the new group's id at once (the reservation
        goes on in the background). Raise ``ValueError`` when ``spec.name`` is taken in ``spec.namespace``
        by a group that is not removed."""
        raise self._unsupported()

    def remove_placement_group(self, group_id: bytes) -> None:
        """Release the group's bundles: its actors are killed (their calls raise ``ActorDiedError``),
        its running tasks' workers are killed, its queued tasks fail with ``TaskPlacementGroupRemoved``,
        and a pending ``placement_group_ready`` ref fails likewise. Idempotent; returns at once."""
        raise self._unsupported()

    def placement_group_ready(self, group_id: bytes, ref: ObjectRef) -> None:
        """Bind ``ref`` (a fresh ref of the runtime) so that, in this backend's object store, it resolves
        to the group's ``PlacementGroup`` handle once every bundle is reserved, or fails with
        ``TaskPlacementGroupRemoved`` if the group is removed first. Returns at once."""
        raise self._unsupported()

    def wait_placement_group(self, group_id: bytes, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for the group to be created: True once it is, else False.
        Raise ``ValueError`` for a removed or unknown group."""
        raise self._unsupported()

    def placement_group_table(self, group_id: bytes | None) -> dict:
        """Ray's ``placement_group_table``: for one group, a dict with ``placement_group_id`` (hex),
        ``name``, ``bundles`` ({index: {resource: amount}}, zero amounts left out),
        ``bundles_to_node_id`` ({index: node id hex, '' while unplaced}), ``strategy`` and ``state``
        ("PENDING", "CREATED", "REMOVED" or "RESCHEDULING"); for ``None``, {id hex: that dict} for
        every group of the cluster, removed ones included. Raise ``ValueError`` for an unknown id."""
        raise self._unsupported()

    def find_placement_group(self, name: str, namespace: str) -> bytes | None:
        """The id of the live (not removed) group named ``name`` in ``namespace``, or None."""
        raise self._unsupported()

    def current_placement_group(self) -> bytes | None:
        """The id of the group the calling task or actor was scheduled into (in this thread's task
        context), or None: in the driver, and in work scheduled outside any group."""
        raise self._unsupported()

    def _unsupported(self) -> NotImplementedError:
        return NotImplementedError(f"{type(self).__name__} declares places_groups = False: this backend has no "
                                   f"placement groups yet.")
