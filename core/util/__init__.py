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


__all__ = ["get_current_placement_group", "get_node_ip_address", "get_placement_group", "list_named_actors",
           "placement_group", "placement_group_table", "remove_placement_group", "scheduling_strategies"]
