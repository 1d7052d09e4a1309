"""The backend kit: everything a backend plugin imports from anyray, in one documented module.

A third-party backend (``anyray-ray`` and ``anyray-dask`` are two) imports
``anyray``, ``anyray.exceptions`` and this module (with its submodules), and
nothing else of anyray: what is here is kept stable for plugins; every other
module of anyray may change. See the README's "Writing a backend".

- ports: the interfaces a backend implements (``Backend`` with its
  ``scheduler`` = ``Scheduler``, the union of ``TaskPort``, ``ActorPort`` and
  ``ClusterInfoPort``; ``ObjectStore``; ``MetadataStore`` with ``Watch``) and
  what it is handed (``BackendConfig``, the ``EventSink``);
- specs and values: what the core submits (``TaskSpec``, ...) and what
  travels (``ObjectRef``, ``ActorHandle``, ``SerializedObject``);
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

from anyray import exceptions
from anyray.actor import ActorHandle, exit_is_intended
from anyray.context import ActorInfo, TaskContext
from anyray.events import TaskRecord
from anyray.exceptions import ActorNameTaken
from anyray.executor import Call, failure_for, run_in_place, serialize_failure
from anyray.object_ref import ObjectRef
from anyray.pickled_refs import note_ref_pickled
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
    Scheduler,
    TaskPort,
    Watch,
)
from anyray.ports.backend import Gap, never, notimpl, notyet
from anyray.serialization import SerializedObject, deserialize, portable_classes, serialize
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor, RemoteFailure, TaskSpec

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
    process_runtime,
    task_runtime,
)
from .threads import DaemonThreadPool

__all__ = [
    # ports
    "Backend", "BackendConfig", "Capability", "EventSink", "Scheduler", "TaskPort", "ActorPort", "ClusterInfoPort",
    "ObjectStore", "MetadataStore", "Watch",
    # specs
    "TaskSpec", "ActorSpec", "ActorTaskSpec", "FunctionDescriptor", "RemoteFailure",
    # values
    "ObjectRef", "ActorHandle", "SerializedObject", "serialize", "deserialize", "note_ref_pickled",
    "portable_classes",
    # running tasks and actors
    "Call", "serialize_failure", "failure_for", "run_in_place", "TaskContext", "ActorInfo", "exit_is_intended",
    "ActorHost", "DaemonThreadPool", "TaskRecord", "ErrorLog", "WorkerEvents",
    # a worker process's runtime
    "Runtime", "attach_runtime", "detach_runtime", "make_current", "current_runtime", "process_runtime",
    "task_runtime",
    # policy
    "allows_another", "call_retry_limit", "fits", "Feasibility", "engine_text",
    # errors
    "exceptions", "ActorNameTaken", "ErrorMap",
    # metadata stores on engines without a change feed
    "PollingWatch",
    # conformance gaps
    "Gap", "notimpl", "notyet", "never",
    # plugin wiring (these load pluggy, on first use)
    "hookimpl", "list_backends",
]


def __getattr__(name: str):
    # Lazily: pluggy is loaded by the plugin machinery, never by the built-in backends' worker processes.
    if name == "hookimpl":
        from anyray.hookspecs import hookimpl

        return hookimpl
    if name == "list_backends":
        from anyray.plugins import list_backends

        return list_backends
    raise AttributeError(f"module 'anyray.backend_kit' has no attribute {name!r}")
