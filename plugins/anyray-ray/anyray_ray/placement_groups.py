"""The PlacementGroupPort on Ray's own placement groups, and anyray's scheduling strategies as Ray's.

An anyray group's id is the binary of Ray's ``PlacementGroupID``, so either
side's handle is made from the other's id without a lookup. Strategies are
translated where a task or actor is handed to Ray (:func:`ray_strategy`);
Ray then reserves, places, captures child tasks, and fails work of a removed
group itself. ``pg.ready()`` is Ray's ready ref: the object store reads the
Ray ``PlacementGroup`` it resolves to as anyray's (:func:`group_payload`).
"""

from __future__ import annotations

import importlib
import inspect

import ray
from ray import exceptions as rx
from ray._raylet import PlacementGroupID
from ray.util import scheduling_strategies as ray_ss

from anyray.backend_kit import (
    NodeAffinitySchedulingStrategy,
    ObjectRef,
    PlacementGroup,
    PlacementGroupPort,
    PlacementGroupSchedulingStrategy,
    PlacementGroupSpec,
    SerializedObject,
    serialize,
)
from anyray.backend_kit import PlacementGroupID as AnyrayGroupID

from .errors import translate

ray_pg = importlib.import_module("ray.util.placement_group")  # the module: ray.util.placement_group is the function
# Ray dropped _max_cpu_fraction_per_node from placement_group() (it is gone in 2.60).
_RAY_HAS_CPU_FRACTION = "_max_cpu_fraction_per_node" in inspect.signature(ray_pg.placement_group).parameters


def ray_group(group: PlacementGroup) -> ray_pg.PlacementGroup:
    return ray_pg.PlacementGroup(PlacementGroupID(group.id.binary()), bundle_cache=group.bundle_cache)


def _ray_handle(group_id: bytes) -> ray_pg.PlacementGroup:
    return ray_pg.PlacementGroup(PlacementGroupID(group_id))


def ray_strategy(value):
    """Ray's form of a validated ``scheduling_strategy`` option."""
    if isinstance(value, PlacementGroupSchedulingStrategy):
        group = value.placement_group
        return ray_ss.PlacementGroupSchedulingStrategy(
            None if group is None or group.is_empty else ray_group(group), value.placement_group_bundle_index,
            value.placement_group_capture_child_tasks)
    if isinstance(value, NodeAffinitySchedulingStrategy):
        return ray_ss.NodeAffinitySchedulingStrategy(value.node_id, value.soft, value._spill_on_unavailable,
                                                     value._fail_on_unavailable)
    return value


def group_payload(value: ray_pg.PlacementGroup) -> SerializedObject:
    """What anyray reads from Ray's ready ref: anyray's handle to the same group."""
    return serialize(PlacementGroup(AnyrayGroupID(value.id.binary())))


class RayPlacementGroups(PlacementGroupPort):
    """Each method is one call of Ray's ``ray.util.placement_group`` API (or its state table)."""

    places_groups = True

    def create_placement_group(self, spec: PlacementGroupSpec) -> bytes:
        kwargs = {"strategy": spec.strategy, "name": spec.name, "lifetime": spec.lifetime}
        if spec.max_cpu_fraction_per_node is not None:
            if not _RAY_HAS_CPU_FRACTION:
                raise ValueError(f"_max_cpu_fraction_per_node is not supported by Ray {ray.__version__}, which "
                                 f"removed it from placement_group(); drop it.")
            kwargs["_max_cpu_fraction_per_node"] = spec.max_cpu_fraction_per_node
        try:
            group = ray_pg.placement_group(spec.bundles, **kwargs)
        except rx.RaySystemError as exc:
            if spec.name and "already exists" in str(exc):
                raise ValueError(f"A placement group named {spec.name!r} already exists in namespace "
                                 f"{spec.namespace!r}. Pick another name, or remove that group first.") from exc
            raise translate(exc, "placement_group()") from exc
        return group.id.binary()

    def remove_placement_group(self, group_id: bytes) -> None:
        try:
            ray_pg.remove_placement_group(_ray_handle(group_id))
        except rx.RayError as exc:
            raise translate(exc, "remove_placement_group()") from exc

    def placement_group_ready(self, group_id: bytes, ref: ObjectRef) -> None:
        ref.native = _ray_handle(group_id).ready()

    def wait_placement_group(self, group_id: bytes, timeout: float) -> bool:
        if timeout <= 0:  # Ray's wait(0) answers False even for a created group: read the state instead
            return self.placement_group_table(group_id)["state"] == "CREATED"
        try:
            return _ray_handle(group_id).wait(timeout)
        except rx.RayError as exc:
            raise translate(exc, "PlacementGroup.wait()") from exc
        except Exception as exc:  # Ray raises a bare Exception for a removed group
            if "does not exist" not in str(exc):
                raise
            raise ValueError(f"Placement group {group_id.hex()} does not exist: it was removed.") from exc

    def placement_group_table(self, group_id: bytes | None) -> dict:
        if group_id is None:
            return ray_pg.placement_group_table()
        table = ray_pg.placement_group_table(_ray_handle(group_id))
        if not table or "state" not in table:
            raise ValueError(f"No placement group has the id {group_id.hex()}.")
        return table

    def find_placement_group(self, name: str, namespace: str) -> bytes | None:
        from ray._private import state  # what ray.util.get_placement_group reads, with the namespace given

        info = state.state.get_placement_group_by_name(name, namespace)
        return None if info is None else bytes.fromhex(info["placement_group_id"])

    def current_placement_group(self) -> bytes | None:
        group = ray_pg.get_current_placement_group()
        return None if group is None else group.id.binary()
