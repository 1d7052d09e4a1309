"""Moved to ``anyray.backend_kit.polling``; re-exported here for the built-in adapters (a shim)."""

from anyray.backend_kit.polling import PollingWatch  # noqa: F401
