"""Moved to ``anyray.backend_kit.error_log``; re-exported here for the built-in adapters (a shim)."""

from anyray.backend_kit.error_log import ErrorLog, WorkerEvents  # noqa: F401
