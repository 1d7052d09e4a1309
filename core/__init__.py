"""anyray: Ray's core API on pluggable backends. ``import anyray as ray`` runs a Ray program."""

from . import exceptions
from . import log as _log  # noqa: F401 - installs the default handler of the ``anyray`` logger
from .actor import ActorClass, ActorHandle, method
from .api import (
    available_resources,
    cancel,
    cluster_resources,
    error_info,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    list_named_actors,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from .generators import DynamicObjectRefGenerator, ObjectRefGenerator
from .object_ref import ObjectRef
from .remote_function import RemoteFunction

__version__ = "0.1.0"

ObjectID = ObjectRef  # Ray's pre-1.0 name

_SUBMODULES = frozenset({"util", "types", "cloudpickle", "experimental"})


def __getattr__(name: str):
    """``ray.util``, ``ray.types``, ``ray.cloudpickle`` and ``ray.experimental`` after a bare ``import ray``,
    imported when first used."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ActorClass", "ActorHandle", "DynamicObjectRefGenerator", "ObjectID", "ObjectRef", "ObjectRefGenerator",
    "RemoteFunction", "__version__",
    "available_resources", "cancel", "cluster_resources", "error_info", "exceptions", "get", "get_actor",
    "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill", "list_named_actors", "method",
    "nodes", "put", "remote", "shutdown", "timeline", "wait",
]
