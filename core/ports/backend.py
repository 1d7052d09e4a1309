"""The Backend port: a scheduler and an object store (a metadata store where the backend has one), and a lifecycle."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .events import EventSink
from .metadata_store import MetadataStore
from .object_store import ObjectStore
from .scheduler import Scheduler


class Capability:
    """Names a backend may declare. The conformance suite skips what is not declared."""

    CONCURRENT = "concurrent"          # tasks run at the same time
    IN_PROCESS = "in_process"          # tasks run in the driver: breakpoint() and print work
    PROCESSES = "processes"            # tasks run in worker processes (force cancel, crashes)
    ZERO_COPY = "zero_copy"            # NumPy arrays read from the store are read-only views
    MULTI_NODE = "multi_node"
    WORKER_RESTART = "worker_restart"  # a crashed worker is replaced and its task retried
    ACTOR_RESTART = "actor_restart"    # max_restarts brings a killed actor back
    FORCE_CANCEL = "force_cancel"      # cancel(force=True) stops a running task at once
    INTERRUPT_CANCEL = "interrupt_cancel"  # cancel() interrupts a running Python task
    OBJECT_SPILLING = "object_spilling"
    TIMELINE = "timeline"              # timeline() lists the tasks that ran
    ERROR_INFO = "error_info"          # error_info() lists failed tasks
    RUNTIME_ENV = "runtime_env"        # each task and actor runs in its own runtime_env (workers per environment)
    RUNTIME_ENV_PIP = "runtime_env_pip"  # runtime_env's pip and uv: a Python environment built per requirement set


@dataclass(frozen=True)
class Gap:
    """A conformance test a backend is known to fail, and why; the suite runs it as a strict expected failure.

    ``kind`` says whose move it is: ``notimpl`` (anyray could do it on this
    backend and has not yet), ``notyet`` (the engine underneath cannot, yet),
    ``never`` (by design, with the reason). ``timeout`` (seconds) bounds a
    gap that shows by hanging, so it fails fast instead of at the suite's
    default timeout. ``by_chance``: the outcome is left to the engine's own
    placement, so the test may pass now and then; it is not strict then. A
    plain string in ``known_gaps`` is a ``notimpl`` gap.
    """

    reason: str
    kind: str = "notimpl"
    timeout: float | None = None
    by_chance: bool = False

    KINDS = {"notimpl": "not implemented yet", "notyet": "the engine cannot yet", "never": "never"}

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ValueError(f"Gap kind must be one of {', '.join(self.KINDS)}, got {self.kind!r}.")
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ValueError("A known gap needs its reason: say why the test fails on this backend.")

    @classmethod
    def of(cls, value: Gap | str) -> Gap:
        return value if isinstance(value, Gap) else cls(value)

    def describe(self) -> str:
        return f"{self.KINDS[self.kind]}: {self.reason}"


def notimpl(reason: str, *, timeout: float | None = None, by_chance: bool = False) -> Gap:
    """anyray could pass this test on the backend and does not yet."""
    return Gap(reason, "notimpl", timeout, by_chance)


def notyet(reason: str, *, timeout: float | None = None, by_chance: bool = False) -> Gap:
    """The engine underneath cannot do this (yet)."""
    return Gap(reason, "notyet", timeout, by_chance)


def never(reason: str, *, timeout: float | None = None) -> Gap:
    """The backend will not do this, by design."""
    return Gap(reason, "never", timeout)


@dataclass
class BackendConfig:
    """The options of ``init``, normalized by the core."""

    address: str | None = None
    num_cpus: float | None = None
    num_gpus: float | None = None
    resources: dict[str, float] = field(default_factory=dict)
    object_store_memory: int | None = None
    namespace: str = ""
    job_id: bytes = b""
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific ``init`` keywords


class Backend(ABC):
    """A way to run anyray programs, found through the ``anyray.backends`` entry points.

    Subclasses set ``name`` and ``capabilities`` and build their scheduler and
    object store (and a metadata store, where they have one) in ``start``.
    ``known_gaps`` maps conformance test names (``name`` or
    ``module::name``) to a :class:`Gap` (or its reason, a string): why the
    backend fails that test. Those tests run as strict expected failures, so
    a gap that closes fails loudly, and a name that matches no test of the
    suite is an error, so a gap cannot go stale.

    Import heavy engines inside ``start``, not at module import: listing
    backends loads every backend class.
    """

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    known_gaps: ClassVar[Mapping[str, Gap | str]] = {}
    description: ClassVar[str] = ""
    accepted_options: ClassVar[frozenset[str]] = frozenset()  # extra ``init`` keywords it takes

    scheduler: Scheduler
    object_store: ObjectStore
    metadata: MetadataStore | None = None  # the core never reads it; the backend's own parts share it
    # where ``ray.util.metrics`` values go: None keeps them in the process's table, which a node serves on its
    # /metrics; an engine with metrics of its own gives an object with ``record(kind, info, value, tags)`` (kind:
    # "counter", "gauge" or "histogram"; info: the metric's ``info``; tags: every tag key's value)
    metric_sink: object | None = None

    def __init__(self, config: BackendConfig, events: EventSink) -> None:
        self.config = config
        self.events = events  # where finished tasks are reported

    @abstractmethod
    def start(self) -> None:
        """Start or connect to the engine; afterwards the stores accept calls.

        Raise ``ValueError`` for options this backend cannot take (naming them)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Stop what ``start`` started and release every resource; idempotent.

        No process, thread or shared-memory segment of the backend outlives it."""

    def reference_counters(self):
        """Factories ``(free) -> ReferenceCounter`` for the runtime's object refs and actor handles, or
        None for plain ones. Called before ``start``; a backend whose references are borrowed from
        another process (a driver connected to a cluster node) counts them its own way."""
        return None

    def info(self) -> dict:
        """``address``, ``node_id`` and ``dashboard_url`` (or ``None``) for ``init``'s context."""
        return {"address": self.config.address, "node_id": None, "dashboard_url": None}
