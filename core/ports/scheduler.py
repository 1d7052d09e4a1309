"""The Scheduler port: places tasks and actors where their resources fit, and runs them."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..object_ref import ObjectRef
from ..specs import ActorSpec, ActorTaskSpec, TaskSpec


class Scheduler(ABC):
    """Runs specs the core has validated; owns resource accounting and placement.

    Results and failures of every task go to the spec's ``returns`` in the
    backend's ObjectStore: a failure is stored as a ``RemoteFailure`` value,
    so a reader of the ref raises it. Submission methods return at once.
    Methods may be called from any thread, including from inside tasks.
    """

    @abstractmethod
    def submit_task(self, spec: TaskSpec) -> None:
        """Queue a task. It runs once its top-level ``deps`` are sealed and its
        resources are free; a task whose resources no node can ever provide
        warns once (naming the task and what is missing) and keeps waiting.
        Worker crashes are retried up to ``spec.max_retries``."""

    @abstractmethod
    def create_actor(self, spec: ActorSpec):
        """Start an actor. Name clashes raise ``ValueError`` here, at the call site.

        The constructor's failure kills the actor: its calls then fail with
        ``ActorDiedError`` carrying the cause. Return the backend's own handle
        of the actor, or ``None``: the core keeps it in ``ActorHandle.native``,
        which travels with the handle when it is pickled. With ``get_if_exists``, a
        backend whose name registry settles races itself may return the
        ``ActorHandle`` of the actor that took the name first."""

    @abstractmethod
    def submit_actor_task(self, spec: ActorTaskSpec) -> None:
        """Queue a method call. Calls from one caller start in ``spec.seq`` order;
        with ``max_concurrency`` 1 they also finish in that order."""

    @abstractmethod
    def get_named_actor(self, name: str, namespace: str):
        """The ``ActorHandle`` of the live actor with this name, or ``None``."""

    @abstractmethod
    def list_named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        """``(namespace, name)`` of live named actors; ``namespace=None`` means all."""

    @abstractmethod
    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        """Kill an actor at once; its pending and later calls fail with ``ActorDiedError``,
        unless ``no_restart`` is false and its ``max_restarts`` allow a restart."""

    @abstractmethod
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        """Cancel the task that produces ``ref``: a queued task never runs; a running
        one is interrupted (``force`` kills its worker where there are processes).
        Its returns then raise ``TaskCancelledError``. A finished task is left alone."""

    def actor_handles_gone(self, actor_id: bytes) -> None:  # noqa: B027 - engines that track handles skip it
        """No handle to the actor is left in this process (nor in a value stored here).

        Ray's rule: an actor, named or not, ends once its last handle is gone,
        after the calls already submitted to it; a ``lifetime="detached"``
        actor lives on. A backend whose engine tracks handles across processes
        itself ignores this."""

    def run_here(self, refs) -> None:  # noqa: B027 - optional: most backends cannot lend a thread
        """The calling thread is about to wait for ``refs``: a backend may run their producers here,
        if they are ready to run and not yet started. Returns once those it took are done."""

    @abstractmethod
    def task_blocked(self) -> None:
        """The calling task waits in ``get``/``wait``: lend its CPUs to others."""

    @abstractmethod
    def task_unblocked(self) -> None:
        """The calling task resumes: take its CPUs back (may briefly oversubscribe)."""

    @abstractmethod
    def cluster_resources(self) -> dict[str, float]:
        """Total resources of all live nodes."""

    @abstractmethod
    def available_resources(self) -> dict[str, float]:
        """Resources not held by running tasks and live actors."""

    @abstractmethod
    def nodes(self) -> list[dict]:
        """One dict per node, with Ray's keys: NodeID, Alive, NodeManagerAddress, Resources."""
