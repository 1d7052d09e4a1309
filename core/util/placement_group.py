"""``ray.util.placement_group``: reserve bundles of resources as a unit, then schedule work into them.

The rules (what is validated, what each call returns) are Ray 2.x's and are
written here once; the backend's scheduler does the reserving, through the
optional ``PlacementGroupPort`` (``places_groups``). A backend without it
raises ``NotImplementedError`` naming itself.
"""

from __future__ import annotations

import numbers

from .. import current as _current
from ..object_ref import ObjectRef

STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_EXAMPLE = '[{"CPU": 1.0}, {"GPU": 1.0}]'


class PlacementGroupID:
    """A placement group's id: ``hex()``, ``binary()``; equal and hashable by value."""

    __slots__ = ("_id",)

    def __init__(self, id: bytes):
        self._id = bytes(id)

    @classmethod
    def nil(cls) -> PlacementGroupID:
        return cls(b"")

    def binary(self) -> bytes:
        return self._id

    def hex(self) -> str:
        return self._id.hex()

    def is_nil(self) -> bool:
        return not self._id

    def __eq__(self, other):
        return isinstance(other, PlacementGroupID) and self._id == other._id

    def __hash__(self):
        return hash(self._id)

    def __reduce__(self):
        return PlacementGroupID, (self._id,)

    def __repr__(self):
        return f"PlacementGroupID({self.hex()})"


def _scheduler(what: str, start: bool = True):
    runtime = _current.require_runtime() if start else _current.current_runtime()
    if runtime is None:
        return None
    scheduler = runtime.scheduler
    if not scheduler.places_groups:
        raise NotImplementedError(f"{what}: the {runtime.backend.name!r} backend has no placement groups yet; "
                                  f"run on a backend that has them (anyray backends lists them).")
    return scheduler


class PlacementGroup:
    """A handle to a placement group: equal (and hashed) by id, picklable, passed to tasks as it is."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict] | None = None):
        self.id = id
        self.bundle_cache = bundle_cache

    @staticmethod
    def empty() -> PlacementGroup:
        return PlacementGroup(PlacementGroupID.nil())

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves to this group once all its bundles are reserved (``get`` raises
        ``TaskPlacementGroupRemoved`` if the group is removed first); use it with ``get`` and ``wait``."""
        if self.is_empty:
            return _current.require_runtime().put(self)
        scheduler = _scheduler("PlacementGroup.ready()")
        ref = _current.require_runtime().new_ref()
        scheduler.placement_group_ready(self.id.binary(), ref)
        return ref

    def wait(self, timeout_seconds: float = 30) -> bool:
        """True once the group is created, False if it is not within ``timeout_seconds``; raises
        ``ValueError`` for a removed group."""
        if isinstance(timeout_seconds, bool) or not isinstance(timeout_seconds, numbers.Real) or timeout_seconds < 0:
            raise ValueError(f"PlacementGroup.wait(): timeout_seconds must be a number >= 0, got {timeout_seconds!r}.")
        return _scheduler("PlacementGroup.wait()").wait_placement_group(self.id.binary(), float(timeout_seconds))

    @property
    def bundle_specs(self) -> list[dict]:
        """The bundles, in order: ``[{"CPU": 1.0}, ...]``."""
        if not self.bundle_cache:
            table = _scheduler("PlacementGroup.bundle_specs").placement_group_table(self.id.binary())
            self.bundle_cache = [dict(table["bundles"][i]) for i in sorted(table["bundles"])]
        return self.bundle_cache

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def __eq__(self, other):
        return isinstance(other, PlacementGroup) and self.id == other.id

    def __hash__(self):
        return hash(self.id)

    def __reduce__(self):
        return PlacementGroup, (self.id, self.bundle_cache)

    def __repr__(self):
        return f"PlacementGroup({self.id.hex()})"


def _check_bundles(bundles) -> list[dict[str, float]]:
    if not isinstance(bundles, list):
        raise ValueError(f"Placement group bundles must be a list of resource dicts such as {_EXAMPLE}, "
                         f"got {type(bundles).__name__}.")
    if not bundles:
        raise ValueError(f"Bundles must be a non-empty list of resource dictionaries. For example: {_EXAMPLE}. "
                         f"Got empty list instead.")
    out = []
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, dict) or not all(isinstance(k, str) for k in bundle) \
                or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bundle.values()):
            raise ValueError(f"Bundles must be a non-empty list of resource dictionaries. For example: {_EXAMPLE}; "
                             f"bundle {i} is {bundle!r}: each maps a resource name (str) to an amount (number).")
        negative = {k: v for k, v in bundle.items() if v < 0}
        if negative:
            raise ValueError(f"Bundle {i} asks for a negative amount of {', '.join(negative)} ({bundle!r}): "
                             f"amounts must be >= 0.")
        if not bundle or all(v == 0 for v in bundle.values()):
            raise ValueError(f"Bundles cannot be an empty dictionary or resources with only 0 values. Bundle {i} "
                             f"is {bundle!r}: give each bundle some resource, e.g. {{'CPU': 1}}.")
        out.append({k: float(v) for k, v in bundle.items()})
    return out


def placement_group(bundles: list[dict[str, float]], strategy: str | None = "PACK", name: str = "",
                    lifetime: str | None = None, _max_cpu_fraction_per_node: float | None = None) -> PlacementGroup:
    """Start reserving ``bundles`` (each a dict of resource name to amount) as one group; returns at once.

    ``strategy``: "PACK" (as few nodes as possible), "SPREAD" (as many as possible), "STRICT_PACK" (one
    node), "STRICT_SPREAD" (each bundle on its own node). ``name`` makes it findable with
    ``get_placement_group`` in this job's namespace. ``lifetime="detached"`` keeps it after the job ends;
    by default it is removed with the job. Use ``pg.ready()`` or ``pg.wait()`` to wait for it.
    """
    strategy = "PACK" if strategy is None else strategy
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}. Supported strategies are: "
                         f"{', '.join(STRATEGIES)}.")
    cache = _check_bundles(bundles)
    if not isinstance(name, str):
        raise TypeError(f"placement_group(): name must be a str ('' for none), got {type(name).__name__} {name!r}.")
    if lifetime not in (None, "detached"):
        raise ValueError(f"Placement group `lifetime` argument must be either `None` or 'detached'. Got {lifetime!r}.")
    fraction = _max_cpu_fraction_per_node
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
                                 or not 0 < fraction <= 1):
        raise ValueError(f"placement_group(): _max_cpu_fraction_per_node must be a number in (0, 1], got {fraction!r}.")
    from ..ports.placement_groups import PlacementGroupSpec

    scheduler = _scheduler("placement_group()")
    spec = PlacementGroupSpec(bundles=[{k: v for k, v in b.items() if v} for b in cache], strategy=strategy,
                              name=name, namespace=_current.require_runtime().namespace, lifetime=lifetime,
                              max_cpu_fraction_per_node=None if fraction is None else float(fraction))
    return PlacementGroup(PlacementGroupID(scheduler.create_placement_group(spec)), cache)


def _check_group(placement_group, fn: str) -> PlacementGroup:
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"{fn} expects a PlacementGroup (from placement_group(...)), got "
                        f"{type(placement_group).__name__}.")
    return placement_group


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Release the group: its actors are killed, its queued tasks fail. Removing it again does nothing."""
    group = _check_group(placement_group, "remove_placement_group()")
    _scheduler("remove_placement_group()").remove_placement_group(group.id.binary())


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group named so in this job's namespace; ``ValueError`` if there is none."""
    if not isinstance(placement_group_name, str) or not placement_group_name:
        raise ValueError(f"Please supply a non-empty value to get_placement_group (a group's name, a str), got "
                         f"{placement_group_name!r}.")
    runtime = _current.require_runtime()
    group_id = _scheduler("get_placement_group()").find_placement_group(placement_group_name, runtime.namespace)
    if group_id is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name} (in namespace "
                         f"{runtime.namespace!r}; a removed group, or one of another namespace, is not found).")
    return PlacementGroup(PlacementGroupID(group_id))


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """The state of one group (``placement_group_id``, ``name``, ``bundles``, ``bundles_to_node_id``,
    ``strategy``, ``state``), or {id hex: state} of every group of the cluster."""
    group_id = None if placement_group is None else _check_group(placement_group, "placement_group_table()").id
    return _scheduler("placement_group_table()").placement_group_table(None if group_id is None else group_id.binary())


def get_current_placement_group() -> PlacementGroup | None:
    """The group the calling task or actor runs in; None in the driver and outside any group."""
    runtime = _current.current_runtime()
    if runtime is None or not runtime.scheduler.places_groups:
        return None
    group_id = runtime.scheduler.current_placement_group()
    return None if group_id is None else PlacementGroup(PlacementGroupID(group_id))


__all__ = ["PlacementGroup", "PlacementGroupID", "get_current_placement_group", "get_placement_group",
           "placement_group", "placement_group_table", "remove_placement_group"]
