"""The Python environments (``pip``/``uv``) of runtime_envs on one node: each built off the node's lock, in
a thread of its own, by ``python_envs.ensure_env`` (once per requirement set on the node: a set built
before, by any process, is found at once), and its interpreter kept for the workers of that environment.

A failed build is not kept: the tasks that waited for it fail with its ``RuntimeEnvSetupError``, and the
next task of that environment tries again (a package index that was down may be back).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from anyray.exceptions import RuntimeEnvSetupError
from anyray.runtime_env import DEFAULT_SETUP_TIMEOUT_SECONDS
from anyray.runtime_env_setup import KEY

from . import python_envs


def tool_of(runtime_env: dict | None) -> str | None:
    """"pip" or "uv" when the environment asks for packages, else None (the node's own interpreter)."""
    if not runtime_env:
        return None
    return "pip" if runtime_env.get("pip") else "uv" if runtime_env.get("uv") else None


class PythonEnvs:
    def __init__(self):
        self._lock = threading.Lock()
        self._pythons: dict[str, str | None] = {}  # environment key -> its interpreter (None: the node's)
        self._waiting: dict[str, list[Callable]] = {}  # environment key -> who waits for its build

    def python_for(self, runtime_env: dict | None, on_built: Callable) -> tuple[bool, str | None]:
        """``(True, interpreter)`` when known now; else ``(False, None)``, and ``on_built(interpreter or
        RuntimeEnvSetupError)`` is called from the build's thread once it is done."""
        tool = tool_of(runtime_env)
        if tool is None:
            return True, None
        key = runtime_env[KEY]
        with self._lock:
            if key in self._pythons:
                return True, self._pythons[key]
            waiting = self._waiting.get(key)
            if waiting is not None:
                waiting.append(on_built)
                return False, None
            self._waiting[key] = [on_built]
        threading.Thread(target=self._build, args=(key, tool, runtime_env), name="anyray-python-env",
                         daemon=True).start()
        return False, None

    def _build(self, key: str, tool: str, runtime_env: dict) -> None:
        timeout = (runtime_env.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_SECONDS)
        try:
            outcome = python_envs.ensure_env(tool, runtime_env[tool], setup_timeout_seconds=timeout)
        except RuntimeEnvSetupError as exc:
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - whatever stops the build fails the work that waits for it
            outcome = RuntimeEnvSetupError(f"{type(exc).__name__}: {exc}")
        with self._lock:
            if not isinstance(outcome, BaseException):
                self._pythons[key] = outcome
            waiting = self._waiting.pop(key, [])
        for on_built in waiting:
            on_built(outcome)
