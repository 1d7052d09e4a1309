"""Moved to ``anyray.backend_kit.actor_host``; re-exported here for the built-in adapters (a shim)."""

from anyray.backend_kit.actor_host import ActorHost  # noqa: F401
