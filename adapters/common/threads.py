"""Moved to ``anyray.backend_kit.threads``; re-exported here for the built-in adapters (a shim)."""

from anyray.backend_kit.threads import DaemonThreadPool  # noqa: F401
