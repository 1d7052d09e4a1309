"""Named actors, in the metadata store: ``actor/<namespace>/<name>`` holds the id of the live actor that
has the name (one per namespace, across every driver and node)."""

from __future__ import annotations

import time

_NAME_SETTLE_TIMEOUT = 30.0  # seconds get_if_exists waits for a name's holder to appear or let go


class NamedActors:
    """Claims and releases actor names; ``get_named_actor(name, namespace)`` is the scheduler's lookup
    (a handle, or None), used while ``get_if_exists`` waits for the winner of a name."""

    def __init__(self, metadata, get_named_actor):
        self._metadata = metadata
        self._get_named_actor = get_named_actor

    def claim(self, spec):
        """Register a named actor. A live actor with that name raises ``ValueError`` at the call site;
        with ``get_if_exists`` its handle is returned instead (another caller won the race for the name:
        ``create_actor`` returns that handle), else None.

        The winner may have taken the name and not yet registered its actor, or the holder may be dying
        and about to let go: both settle within moments, so look again until one of them has."""
        name = spec.options["name"]
        if name is None:
            return None
        key = f"actor/{spec.namespace}/{name}"
        deadline = time.monotonic() + _NAME_SETTLE_TIMEOUT
        while True:
            if self._metadata.compare_and_set(key, None, spec.actor_id) or self._metadata.get(key) == spec.actor_id:
                return None
            if not spec.options["get_if_exists"]:
                break
            winner = self._get_named_actor(name, spec.namespace)
            if winner is not None:
                return winner
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        raise ValueError(f"An actor named {name!r} already exists in namespace {spec.namespace!r}. "
                         f"Pick another name, or pass get_if_exists=True to reuse it.")

    def release(self, spec) -> None:
        name = spec.options["name"]
        if name is not None:
            self._metadata.compare_and_set(f"actor/{spec.namespace}/{name}", spec.actor_id, None)

    def actor_id(self, name: str, namespace: str) -> bytes | None:
        return self._metadata.get(f"actor/{namespace}/{name}")

    def list(self, namespace) -> list[tuple[str, str]]:
        out = []
        for key, _ in self._metadata.scan("actor/"):
            _, ns, name = key.split("/", 2)
            if namespace is None or ns == namespace:
                out.append((ns, name))
        return out
