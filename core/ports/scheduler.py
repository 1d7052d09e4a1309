"""The Scheduler port: the union of the task, actor, cluster-info, placement-group and state ports.

A backend's ``scheduler`` implements all five; each declares its optional
methods with a capability flag (``runs_here``, ``tracks_handles``,
``lends_cpus``, ``places_groups``, ``lists_state``) that the runtime reads once.
"""

from __future__ import annotations

from .actors import ActorPort
from .cluster_info import ClusterInfoPort
from .placement_groups import PlacementGroupPort
from .state import StatePort
from .tasks import TaskPort

#: The optional methods of the scheduler ports, by the capability flag that declares them.
OPTIONAL_METHODS = {
    "runs_here": ("run_here",),
    "tracks_handles": ("actor_handles_gone",),
    "lends_cpus": ("task_blocked", "task_unblocked"),
    "places_groups": ("create_placement_group", "remove_placement_group", "placement_group_ready",
                      "wait_placement_group", "placement_group_table", "find_placement_group",
                      "current_placement_group"),
    "lists_state": ("list_state",),
}
#: The object store's, likewise (``anyray.ports.ObjectStore``).
OPTIONAL_STORE_METHODS = {"frees_objects": ("free",)}


class Scheduler(TaskPort, ActorPort, ClusterInfoPort, PlacementGroupPort, StatePort):
    """Runs specs the core has validated; owns resource accounting and placement.

    See :class:`TaskPort`, :class:`ActorPort`, :class:`ClusterInfoPort`, :class:`PlacementGroupPort` and
    :class:`StatePort`
    for the methods, and their capability flags for the optional ones.
    """


__all__ = ["ActorPort", "ClusterInfoPort", "OPTIONAL_METHODS", "OPTIONAL_STORE_METHODS", "PlacementGroupPort",
           "Scheduler", "StatePort", "TaskPort"]
