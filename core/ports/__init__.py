"""The ports: the interfaces the core owns and every backend adapts to."""

from .actors import ActorPort
from .backend import Backend, BackendConfig, Capability
from .cluster_info import ClusterInfoPort
from .events import EventSink
from .metadata_store import MetadataStore, Watch
from .object_store import ObjectStore
from .placement_groups import PlacementGroupPort, PlacementGroupSpec
from .scheduler import Scheduler
from .state import StatePort
from .tasks import TaskPort

__all__ = ["ActorPort", "Backend", "BackendConfig", "Capability", "ClusterInfoPort", "EventSink", "MetadataStore",
           "ObjectStore", "PlacementGroupPort", "PlacementGroupSpec", "Scheduler", "StatePort", "TaskPort",
           "Watch"]
