"""The ActorPort: creates actors, runs their method calls, finds them by name, and kills them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..specs import ActorSpec, ActorTaskSpec


class ActorPort(ABC):
    """Actors: placed where their resources fit, each running its calls in order.

    Capability: ``tracks_handles = True`` declares :meth:`actor_handles_gone`:
    the backend ends an actor when the runtime says its last handle is gone.
    A backend whose engine tracks handles across processes itself leaves it
    False, and the runtime never calls the method.
    """

    tracks_handles: ClassVar[bool] = False

    @abstractmethod
    def create_actor(self, spec: ActorSpec):
        """Start an actor. Name clashes raise ``ValueError`` here, at the call site.

        The constructor's failure kills the actor: its calls then fail with
        ``ActorDiedError`` carrying the cause. Return the backend's own handle
        of the actor, or ``None``: the core keeps it in ``ActorHandle.native``,
        which travels with the handle when it is pickled. With ``get_if_exists``,
        a backend whose name registry settles races itself raises
        ``ActorNameTaken(handle)`` with the ``ActorHandle`` of the actor that
        took the name first; the core returns that handle to the caller."""

    @abstractmethod
    def submit_actor_task(self, spec: ActorTaskSpec) -> None:
        """Queue a method call. Calls from one caller start in ``spec.seq`` order;
        with ``max_concurrency`` 1 they also finish in that order. A generator method's call streams
        as ``TaskPort.submit_task`` says."""

    @abstractmethod
    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        """Kill an actor at once; its pending and later calls fail with ``ActorDiedError``,
        unless ``no_restart`` is false and its ``max_restarts`` allow a restart."""

    def actor_handles_gone(self, actor_id: bytes) -> None:
        """Optional (``tracks_handles``). No handle to the actor is left in this process (nor in a
        value stored here).

        Ray's rule: an actor, named or not, ends once its last handle is gone,
        after the calls already submitted to it; a ``lifetime="detached"``
        actor lives on."""
        raise NotImplementedError(f"{type(self).__name__} declares tracks_handles = False: its engine "
                                  f"tracks actor handles itself.")

    @abstractmethod
    def get_named_actor(self, name: str, namespace: str):
        """The ``ActorHandle`` of the live actor with this name, or ``None``."""

    @abstractmethod
    def list_named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        """``(namespace, name)`` of live named actors; ``namespace=None`` means all."""
