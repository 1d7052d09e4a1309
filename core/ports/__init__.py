"""The ports: the interfaces the core owns and every backend adapts to."""

from .backend import Backend, BackendConfig, Capability
from .metadata_store import MetadataStore, Watch
from .object_store import ObjectStore
from .scheduler import Scheduler

__all__ = ["Backend", "BackendConfig", "Capability", "MetadataStore", "ObjectStore", "Scheduler", "Watch"]
