"""A worker's runtime_env: the node sends it once, when it starts the worker for it (``prepare``); the worker
sets it up before its first task or its actor (``ensure``), fetching packages from the object store.

A worker whose environment could not be set up fails every task it is given with the same
``RuntimeEnvSetupError`` (the node gives it only work of that environment).
"""

from __future__ import annotations

from anyray import runtime_env_setup
from anyray.exceptions import RuntimeEnvSetupError
from anyray.object_ref import ObjectRef
from anyray.specs import RemoteFailure

_pending: tuple | None = None  # (the environment, where to unpack packages), until set up
_error: str | None = None      # why setting it up failed


def prepare(env: dict, resources_dir: str) -> None:
    """A CALL from the node when it starts this worker for ``env``."""
    global _pending
    _pending = (env, resources_dir)


def ensure(node) -> None:
    """Set up the environment this worker was started for, once; raise ``RuntimeEnvSetupError`` if that
    fails (now, or before)."""
    global _pending, _error
    if _error is not None:
        raise RuntimeEnvSetupError(_error)
    if _pending is None:
        return
    env, root = _pending
    _pending = None

    def fetch(object_hex: str) -> bytes:
        value = node.fetch([ObjectRef(bytes.fromhex(object_hex))])[0]
        if type(value) is RemoteFailure:
            raise value.error
        return value
    try:
        runtime_env_setup.apply(env, fetch, root)
    except RuntimeEnvSetupError as exc:
        _error = exc.error_message
        raise
