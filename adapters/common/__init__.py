"""Machinery several built-in backends share: resource accounting, thread pools, the
in-memory object table, and the host that runs one actor on threads."""
