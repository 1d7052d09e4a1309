"""``ray.util``: helpers beside the core API that Ray programs import from ``ray.util``."""

from __future__ import annotations

from .. import runtime as _rt
from ..api import list_named_actors
from . import scheduling_strategies
from .placement_group import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)


def get_node_ip_address() -> str:
    """The IP address of the node this process runs on (where its node daemon listens).

    Outside any runtime, and on the single-machine backends, it is 127.0.0.1: their processes talk
    over loopback only.
    """
    runtime = _rt.current_runtime()
    if runtime is not None:
        node_id = runtime.backend.info().get("node_id")
        for node in runtime.scheduler.nodes():
            if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
                return node["NodeManagerAddress"]
    return "127.0.0.1"


# Helpers imported when first used, so that ``import anyray.util`` stays cheap (no joblib, no actor classes).
_LAZY = {
    "ActorPool": ("actor_pool", "ActorPool"),
    "inspect_serializability": ("check_serialize", "inspect_serializability"),
    "as_completed": ("helpers", "as_completed"),
    "map_unordered": ("helpers", "map_unordered"),
}
_SUBMODULES = frozenset({"actor_pool", "check_serialize", "helpers", "queue", "multiprocessing", "joblib", "state"})


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["get_current_placement_group", "get_node_ip_address", "get_placement_group", "list_named_actors",
           "placement_group", "placement_group_table", "remove_placement_group", "scheduling_strategies"]
__all__ += list(_LAZY)
