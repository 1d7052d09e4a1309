"""``ray.util.scheduling_strategies``: where a task or actor runs, given as ``.options(scheduling_strategy=...)``.

Besides these classes, ``scheduling_strategy`` takes ``"DEFAULT"`` and
``"SPREAD"``. The strategies are plain values: equal when their fields are,
picklable, and checked here for their types; a bundle index is checked
against its group when the option is given (``anyray.options``).
"""

from __future__ import annotations

import numbers

from .placement_group import PlacementGroup, PlacementGroupID


class PlacementGroupSchedulingStrategy:
    """Run in ``placement_group``: in its bundle ``placement_group_bundle_index``, or in any bundle with
    room for -1. ``placement_group=None`` means in no group (the child of a capturing task opts out so).
    With ``placement_group_capture_child_tasks=True``, the tasks and actors this one starts without a
    strategy of their own run in the same group too (and theirs, in turn)."""

    __slots__ = ("placement_group", "placement_group_bundle_index", "placement_group_capture_child_tasks")

    def __init__(self, placement_group: PlacementGroup | None, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None):
        if placement_group is not None and not isinstance(placement_group, PlacementGroup):
            raise TypeError(f"PlacementGroupSchedulingStrategy: placement_group must be a PlacementGroup (from "
                            f"placement_group(...)) or None, got {type(placement_group).__name__}.")
        index = placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"PlacementGroupSchedulingStrategy: placement_group_bundle_index must be an int (-1 for "
                            f"any bundle), got {type(index).__name__} {index!r}.")
        capture = placement_group_capture_child_tasks
        if capture is not None and not isinstance(capture, bool):
            raise TypeError(f"PlacementGroupSchedulingStrategy: placement_group_capture_child_tasks must be True, "
                            f"False or None, got {capture!r}.")
        self.placement_group = placement_group
        self.placement_group_bundle_index = int(index)
        self.placement_group_capture_child_tasks = capture

    def _key(self):
        return (self.placement_group, self.placement_group_bundle_index, self.placement_group_capture_child_tasks)

    def __eq__(self, other):
        return isinstance(other, PlacementGroupSchedulingStrategy) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return PlacementGroupSchedulingStrategy, self._key()

    def __repr__(self):
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, placement_group_bundle_index="
                f"{self.placement_group_bundle_index}, placement_group_capture_child_tasks="
                f"{self.placement_group_capture_child_tasks})")


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``get_runtime_context().get_node_id()`` and ``nodes()`` give it).

    ``soft=False``: only there; waits while the node is busy, and fails (``TaskUnschedulableError``,
    ``ActorUnschedulableError``) when the node is dead or unknown. ``soft=True``: there if it is alive
    and can ever hold the work, else anywhere."""

    __slots__ = ("node_id", "soft", "_spill_on_unavailable", "_fail_on_unavailable")

    def __init__(self, node_id, soft: bool, _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False):
        if not isinstance(node_id, str):
            hex_of = getattr(node_id, "hex", None)
            if not callable(hex_of):
                raise TypeError(f"NodeAffinitySchedulingStrategy: node_id must be a node id in hex (a str, as "
                                f"anyray.nodes() lists it), got {type(node_id).__name__} {node_id!r}.")
            node_id = hex_of()
        try:
            valid = bool(node_id) and len(node_id) % 2 == 0 and bytes.fromhex(node_id) is not None
        except ValueError:
            valid = False
        if not valid:
            raise ValueError(f"Invalid node_id {node_id!r}. Node ID must be a valid hex string. To get a list of "
                             f"all nodes and their IDs in your cluster, use anyray.nodes().")
        for name, value in (("soft", soft), ("_spill_on_unavailable", _spill_on_unavailable),
                            ("_fail_on_unavailable", _fail_on_unavailable)):
            if not isinstance(value, bool):
                raise TypeError(f"NodeAffinitySchedulingStrategy: {name} must be True or False, got {value!r}.")
        if _spill_on_unavailable and not soft:
            raise ValueError("_spill_on_unavailable cannot be set when soft is False. Please set soft to True to "
                             "use _spill_on_unavailable.")
        if _fail_on_unavailable and soft:
            raise ValueError("_fail_on_unavailable cannot be set when soft is True. Please set soft to False to "
                             "use _fail_on_unavailable.")
        self.node_id = node_id
        self.soft = soft
        self._spill_on_unavailable = _spill_on_unavailable
        self._fail_on_unavailable = _fail_on_unavailable

    def _key(self):
        return (self.node_id, self.soft, self._spill_on_unavailable, self._fail_on_unavailable)

    def __eq__(self, other):
        return isinstance(other, NodeAffinitySchedulingStrategy) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __reduce__(self):
        return NodeAffinitySchedulingStrategy, self._key()

    def __repr__(self):
        return f"NodeAffinitySchedulingStrategy({self.node_id!r}, soft={self.soft})"


def placement_of(strategy) -> tuple[bytes, bool] | None:
    """(group id, capture child tasks) of a ``scheduling_strategy`` option that schedules into a group, else
    None: what a task's context keeps (``TaskContext.placement``) for ``get_current_placement_group`` and
    for capturing its child tasks."""
    if type(strategy) is PlacementGroupSchedulingStrategy and strategy.placement_group is not None:
        return strategy.placement_group.id.binary(), bool(strategy.placement_group_capture_child_tasks)
    return None


def captured_strategy(placement: tuple[bytes, bool] | None) -> PlacementGroupSchedulingStrategy | None:
    """The strategy a child task or actor submitted with none gets inside a task or actor in ``placement``:
    the same group (any bundle, capturing in turn) when that one captures its children, else None."""
    if placement is None or not placement[1]:
        return None
    return PlacementGroupSchedulingStrategy(PlacementGroup(PlacementGroupID(placement[0])), -1, True)


__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
