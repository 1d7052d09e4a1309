"""The backend kit: everything a backend plugin imports from anyray, in one documented module.

A third-party backend (``anyray-ray`` and ``anyray-dask`` are two) imports
``anyray``, ``anyray.exceptions`` and this module (with its submodules), and
nothing else of anyray: what is here is kept stable for plugins; every other
module of anyray may change. See the README's "Writing a backend".

- ports: the interfaces a backend implements (``Backend`` with its
  ``scheduler`` = ``Scheduler``, the union of ``TaskPort``, ``ActorPort``,
  ``ClusterInfoPort``, the optional ``PlacementGroupPort`` with its
  ``PlacementGroupSpec`` and the optional ``StatePort``; ``ObjectStore``; ``MetadataStore`` with ``Watch``)
  and what it is handed (``BackendConfig``, the ``EventSink``);
- specs and values: what the core submits (``TaskSpec``, ...; in its options,
  ``PlacementGroupSchedulingStrategy`` holding a ``PlacementGroup``, and
  ``NodeAffinitySchedulingStrategy``) and what travels (``ObjectRef``,
  ``ActorHandle``, ``SerializedObject``);
- the executor: running a task or an actor call the way every backend does
  (``Call``, ``ActorHost``), its failures as values;
- a worker process's runtime: ``attach_runtime`` and friends;
- the shared policy (retries, restarts, whether a demand fits, the
  infeasible-work warning), error translation (``ErrorMap``), gap markers
  for the conformance suite, and ``hookimpl`` to register the plugin.

``anyray.backend_kit.testing`` holds the contract tests a plugin runs
against its own stores (it imports pytest).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each name, and the module it comes from. They are imported on first use (PEP 562): listing backends
# imports every plugin's module, and the built-in backends' worker processes import a few parts of the kit
# only, so importing the kit costs nothing until a name is used.
_WHERE = {
    "Backend": "anyray.ports", "BackendConfig": "anyray.ports", "Capability": "anyray.ports",
    "EventSink": "anyray.ports", "Scheduler": "anyray.ports", "TaskPort": "anyray.ports",
    "ActorPort": "anyray.ports", "ClusterInfoPort": "anyray.ports", "ObjectStore": "anyray.ports",
    "MetadataStore": "anyray.ports", "Watch": "anyray.ports",
    "PlacementGroupPort": "anyray.ports", "PlacementGroupSpec": "anyray.ports", "StatePort": "anyray.ports",
    "PlacementGroup": "anyray.util.placement_group", "PlacementGroupID": "anyray.util.placement_group",
    "PlacementGroupSchedulingStrategy": "anyray.util.scheduling_strategies",
    "NodeAffinitySchedulingStrategy": "anyray.util.scheduling_strategies",
    "TaskSpec": "anyray.specs", "ActorSpec": "anyray.specs", "ActorTaskSpec": "anyray.specs",
    "FunctionDescriptor": "anyray.specs", "RemoteFailure": "anyray.specs",
    "ObjectRef": "anyray.object_ref", "ActorHandle": "anyray.actor", "SerializedObject": "anyray.serialization",
    "serialize": "anyray.serialization", "deserialize": "anyray.serialization",
    "note_ref_pickled": "anyray.pickled_refs", "portable_classes": "anyray.serialization",
    "Call": "anyray.executor", "serialize_failure": "anyray.executor", "failure_for": "anyray.executor",
    "run_in_place": "anyray.executor", "TaskContext": "anyray.context", "ActorInfo": "anyray.context",
    "current_task": "anyray.context",
    "STREAMING": "anyray.generators", "DYNAMIC": "anyray.generators", "StreamSpec": "anyray.generators",
    "stream_of": "anyray.generators", "stream_spec": "anyray.generators", "item_id": "anyray.generators",
    "ObjectRefGenerator": "anyray.generators", "DynamicObjectRefGenerator": "anyray.generators",
    "exit_is_intended": "anyray.actor", "ActorHost": "anyray.backend_kit.actor_host",
    "DaemonThreadPool": "anyray.backend_kit.threads", "TaskRecord": "anyray.events",
    "ErrorLog": "anyray.backend_kit.error_log", "WorkerEvents": "anyray.backend_kit.error_log",
    "Runtime": "anyray.backend_kit.runtime", "attach_runtime": "anyray.backend_kit.runtime",
    "detach_runtime": "anyray.backend_kit.runtime", "make_current": "anyray.backend_kit.runtime",
    "current_runtime": "anyray.backend_kit.runtime", "process_runtime": "anyray.backend_kit.runtime",
    "task_runtime": "anyray.backend_kit.runtime", "mark_worker_process": "anyray.backend_kit.runtime",
    "allows_another": "anyray.policy", "call_retry_limit": "anyray.policy", "fits": "anyray.policy",
    "Feasibility": "anyray.policy", "engine_text": "anyray.policy",
    "ActorNameTaken": "anyray.exceptions", "ErrorMap": "anyray.backend_kit.errors",
    "PollingWatch": "anyray.backend_kit.polling",
    "Gap": "anyray.ports.backend", "notimpl": "anyray.ports.backend", "notyet": "anyray.ports.backend",
    "never": "anyray.ports.backend",
    "hookimpl": "anyray.hookspecs", "list_backends": "anyray.plugins",  # these two load pluggy
    "apply_runtime_env": "anyray.runtime_env_setup", "runtime_env_packages": "anyray.runtime_env_setup",
}

if TYPE_CHECKING:  # for readers and type checkers: the same names, imported eagerly
    from anyray import exceptions
    from anyray.actor import ActorHandle, exit_is_intended
    from anyray.context import ActorInfo, TaskContext, current_task
    from anyray.events import TaskRecord
    from anyray.exceptions import ActorNameTaken
    from anyray.executor import Call, failure_for, run_in_place, serialize_failure
    from anyray.generators import (
        DYNAMIC,
        STREAMING,
        DynamicObjectRefGenerator,
        ObjectRefGenerator,
        StreamSpec,
        item_id,
        stream_of,
        stream_spec,
    )
    from anyray.hookspecs import hookimpl
    from anyray.object_ref import ObjectRef
    from anyray.pickled_refs import note_ref_pickled
    from anyray.plugins import list_backends
    from anyray.policy import Feasibility, allows_another, call_retry_limit, engine_text, fits
    from anyray.ports import (
        ActorPort,
        Backend,
        BackendConfig,
        Capability,
        ClusterInfoPort,
        EventSink,
        MetadataStore,
        ObjectStore,
        PlacementGroupPort,
        PlacementGroupSpec,
        Scheduler,
        StatePort,
        TaskPort,
        Watch,
    )
    from anyray.ports.backend import Gap, never, notimpl, notyet
    from anyray.runtime_env_setup import apply_runtime_env, runtime_env_packages
    from anyray.serialization import SerializedObject, deserialize, portable_classes, serialize
    from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure, TaskSpec
    from anyray.util.placement_group import PlacementGroup, PlacementGroupID
    from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

    from .actor_host import ActorHost
    from .error_log import ErrorLog, WorkerEvents
    from .errors import ErrorMap
    from .polling import PollingWatch
    from .runtime import (
        Runtime,
        attach_runtime,
        current_runtime,
        detach_runtime,
        make_current,
        mark_worker_process,
        process_runtime,
        task_runtime,
    )
    from .threads import DaemonThreadPool

__all__ = [
    # ports
    "Backend", "BackendConfig", "Capability", "EventSink", "Scheduler", "TaskPort", "ActorPort", "ClusterInfoPort",
    "ObjectStore", "MetadataStore", "Watch", "PlacementGroupPort", "PlacementGroupSpec", "StatePort",
    # specs
    "TaskSpec", "ActorSpec", "ActorTaskSpec", "FunctionDescriptor", "RemoteFailure",
    # placement groups: the handle and the strategies a scheduler finds in a spec's options
    "PlacementGroup", "PlacementGroupID", "PlacementGroupSchedulingStrategy", "NodeAffinitySchedulingStrategy",
    # values
    "ObjectRef", "ActorHandle", "SerializedObject", "serialize", "deserialize", "note_ref_pickled",
    "portable_classes",
    # running tasks and actors
    "Call", "serialize_failure", "failure_for", "run_in_place", "TaskContext", "ActorInfo", "exit_is_intended",
    "ActorHost", "DaemonThreadPool", "TaskRecord", "ErrorLog", "WorkerEvents", "current_task",
    # generators (anyray.generators: the stream's ids and how a call streams)
    "STREAMING", "DYNAMIC", "StreamSpec", "stream_of", "stream_spec", "item_id", "ObjectRefGenerator",
    "DynamicObjectRefGenerator",
    # a worker process's runtime
    "Runtime", "attach_runtime", "detach_runtime", "make_current", "current_runtime", "process_runtime",
    "task_runtime", "mark_worker_process",
    # policy
    "allows_another", "call_retry_limit", "fits", "Feasibility", "engine_text",
    # errors
    "exceptions", "ActorNameTaken", "ErrorMap",
    # metadata stores on engines without a change feed
    "PollingWatch",
    # conformance gaps
    "Gap", "notimpl", "notyet", "never",
    # a job's runtime_env set up in an engine's worker processes (Backend.set_job_runtime_env)
    "apply_runtime_env", "runtime_env_packages",
    # plugin wiring (these load pluggy, on first use)
    "hookimpl", "list_backends",
]




def __getattr__(name: str):
    if name == "exceptions":
        value = importlib.import_module("anyray.exceptions")
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    else:
        raise AttributeError(f"module 'anyray.backend_kit' has no attribute {name!r}")
    globals()[name] = value  # once: later uses read the module's dict
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
