"""The Scheduler port: the union of the task, actor and cluster-info ports a backend's scheduler adapts to.

A backend's ``scheduler`` implements all three; each declares its optional
methods with a capability flag (``runs_here``, ``tracks_handles``,
``lends_cpus``) that the runtime reads once.
"""

from __future__ import annotations

from .actors import ActorPort
from .cluster_info import ClusterInfoPort
from .tasks import TaskPort

#: The optional methods of the scheduler ports, by the capability flag that declares them.
OPTIONAL_METHODS = {
    "runs_here": ("run_here",),
    "tracks_handles": ("actor_handles_gone",),
    "lends_cpus": ("task_blocked", "task_unblocked"),
}
#: The object store's, likewise (``anyray.ports.ObjectStore``).
OPTIONAL_STORE_METHODS = {"frees_objects": ("free",)}


class Scheduler(TaskPort, ActorPort, ClusterInfoPort):
    """Runs specs the core has validated; owns resource accounting and placement.

    See :class:`TaskPort`, :class:`ActorPort` and :class:`ClusterInfoPort`
    for the methods, and their capability flags for the optional ones.
    """


__all__ = ["ActorPort", "ClusterInfoPort", "OPTIONAL_METHODS", "OPTIONAL_STORE_METHODS", "Scheduler", "TaskPort"]
