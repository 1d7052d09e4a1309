"""``anyray.runtime_env``: Ray's ``RuntimeEnv`` and ``RuntimeEnvConfig``, and the rules every backend applies
to a ``runtime_env``: validation (at the call site, with Ray's errors), and the merge of a parent's
environment (the job's, or the calling task's) with a task's or actor's own.

A runtime_env is a plain dict (a ``RuntimeEnv`` is one too). Validation returns it normalized: empty
fields dropped (as Ray drops them), ``pip``/``uv`` as ``{"packages": [...], ...}``, ``config`` as a
``RuntimeEnvConfig``. Whether a backend can honour a field is decided where the task is submitted
(``runtime_env_setup``); here only what Ray itself would refuse is refused, plus keys Ray does not know.
"""

from __future__ import annotations

import copy
import json
import os
from collections import OrderedDict
from typing import Any

# What a runtime_env may hold, as Ray 2.x knows it (ray.runtime_env.RuntimeEnv.known_fields).
KNOWN_FIELDS = frozenset({
    "py_modules", "py_executable", "java_jars", "working_dir", "conda", "pip", "uv", "container", "excludes",
    "env_vars", "_ray_release", "_ray_commit", "_inject_current_ray", "config", "worker_process_setup_hook",
    "_nsight", "_rocprof_sys", "image_uri",
})
# What the built-in backends (local, multiprocess, cluster) set up; a backend lists its own in
# ``Backend.runtime_env_fields`` (the Ray backend: every field Ray knows).
BUILT_IN_FIELDS = frozenset({"working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "config",
                             "worker_process_setup_hook"})
DEFAULT_SETUP_TIMEOUT_SECONDS = 600


class RuntimeEnvConfig(dict):
    """Ray's ``RuntimeEnvConfig``: ``setup_timeout_seconds`` (an int > 0, or -1 for none; 600 by default) and
    ``eager_install`` (True by default: the job's environment is set up at ``init``), ``log_files``."""

    known_fields = frozenset({"setup_timeout_seconds", "eager_install", "log_files"})

    def __init__(self, setup_timeout_seconds: int = DEFAULT_SETUP_TIMEOUT_SECONDS, eager_install: bool = True,
                 log_files: list[str] | None = None):
        super().__init__()
        if isinstance(setup_timeout_seconds, bool) or not isinstance(setup_timeout_seconds, int):
            raise TypeError(f"setup_timeout_seconds must be of type int, got: {type(setup_timeout_seconds)}")
        if setup_timeout_seconds <= 0 and setup_timeout_seconds != -1:
            raise ValueError(f"setup_timeout_seconds must be greater than zero or equals to -1, got: "
                             f"{setup_timeout_seconds}")
        if not isinstance(eager_install, bool):
            raise TypeError(f"eager_install must be a boolean. got {type(eager_install)}")
        if log_files is not None and (not isinstance(log_files, list) or
                                      not all(isinstance(f, str) for f in log_files)):
            raise TypeError(f"log_files must be a list of strings or None, got {log_files!r}.")
        self["setup_timeout_seconds"] = setup_timeout_seconds
        self["eager_install"] = eager_install
        self["log_files"] = list(log_files or [])

    @staticmethod
    def parse_and_validate_runtime_env_config(config) -> RuntimeEnvConfig:
        if isinstance(config, RuntimeEnvConfig):
            return config
        if isinstance(config, dict):
            unknown = set(config) - RuntimeEnvConfig.known_fields
            if unknown:
                raise ValueError(f"runtime_env['config'] has unknown field(s) {sorted(unknown)}; it takes "
                                 f"{', '.join(sorted(RuntimeEnvConfig.known_fields))}.")
            return RuntimeEnvConfig(**config)
        raise TypeError(f"runtime_env['config'] must be of type dict or RuntimeEnvConfig, got: {type(config)}")

    @classmethod
    def default_config(cls) -> RuntimeEnvConfig:
        return cls()

    def to_dict(self) -> dict:
        return dict(self)


class RuntimeEnv(dict):
    """Ray's ``RuntimeEnv``: a dict of runtime_env fields, validated as it is built.

    ``RuntimeEnv(env_vars={"A": "1"}, working_dir="./src")`` equals ``{"env_vars": {"A": "1"},
    "working_dir": "./src"}`` and may be passed wherever a runtime_env dict is."""

    known_fields = KNOWN_FIELDS

    def __init__(self, *, py_modules=None, py_executable=None, working_dir=None, pip=None, conda=None,
                 container=None, env_vars=None, worker_process_setup_hook=None, nsight=None, rocprof_sys=None,
                 config=None, _validate: bool = True, image_uri=None, uv=None, **kwargs):
        super().__init__()
        given = dict(kwargs)
        for key, value in (("py_modules", py_modules), ("py_executable", py_executable),
                           ("working_dir", working_dir), ("pip", pip), ("uv", uv), ("conda", conda),
                           ("_nsight", nsight), ("_rocprof_sys", rocprof_sys), ("container", container),
                           ("env_vars", env_vars), ("config", config),
                           ("worker_process_setup_hook", worker_process_setup_hook), ("image_uri", image_uri)):
            if value is not None:
                given[key] = value
        self.update(validate(given, "RuntimeEnv()") if _validate else given)

    @classmethod
    def deserialize(cls, serialized: str) -> RuntimeEnv:
        return cls(_validate=False, **json.loads(serialized))

    def serialize(self) -> str:
        return to_string(self)

    def to_dict(self) -> dict:
        out = dict(copy.deepcopy(dict(self)))
        if isinstance(out.get("config"), RuntimeEnvConfig):
            out["config"] = out["config"].to_dict()
        return out

    def working_dir(self) -> str:
        return self.get("working_dir", "")

    def py_modules(self) -> list[str]:
        return list(self.get("py_modules") or [])

    def env_vars(self) -> dict:
        return dict(self.get("env_vars") or {})

    def has_working_dir(self) -> bool:
        return bool(self.get("working_dir"))

    def has_pip(self) -> bool:
        return bool(self.get("pip"))

    def has_uv(self) -> bool:
        return bool(self.get("uv"))

    def pip_config(self) -> dict:
        return dict(self.get("pip") or {})

    def uv_config(self) -> dict:
        return dict(self.get("uv") or {})


def to_string(env: dict | None) -> str:
    """The JSON text Ray's ``get_runtime_env_string()`` returns (``"{}"`` for no environment)."""
    return json.dumps(public(env), sort_keys=True, separators=(",", ":"), default=str)


def public(env: dict | None) -> dict:
    """``env`` as the user gave it (merged): without what anyray adds to ship packages."""
    return {k: v for k, v in (env or {}).items() if not k.startswith(PRIVATE_PREFIX)}


# The key under which a submitted environment carries its packed folders (uri -> object id); private, as
# every key with the prefix (the submitting side adds them; the user's environment never has them).
PRIVATE_PREFIX = "_anyray_"
PACKAGES_KEY = "_anyray_packages"

_UNSUPPORTED_HINT = {
    "conda": "use 'pip' or 'uv' for Python packages",
    "container": "run the program inside the container instead",
    "image_uri": "run the program inside the image instead",
}


# --------------------------------------------------------------------------- validation

def validate(runtime_env, owner: str) -> dict | None:
    """Check a runtime_env the user gave (to ``init``, ``@remote``, ``.options``); return it normalized,
    or None for an empty one. Raises ``TypeError``/``ValueError`` with Ray's wording."""
    if runtime_env is None:
        return None
    if not isinstance(runtime_env, dict):
        raise TypeError(f"{owner}: runtime_env must be a dict or a RuntimeEnv, got {type(runtime_env).__name__} "
                        f"{runtime_env!r}.")
    out: dict[str, Any] = {}
    for key, value in runtime_env.items():
        if not isinstance(key, str) or (key not in KNOWN_FIELDS and not key.startswith(PRIVATE_PREFIX)):
            import difflib  # only to word an error

            close = difflib.get_close_matches(str(key), sorted(KNOWN_FIELDS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{owner}: unknown runtime_env field {key!r}.{hint} Known fields: "
                             f"{', '.join(sorted(k for k in KNOWN_FIELDS if not k.startswith('_')))}.")
        if value is None:
            continue
        checker = _CHECKERS.get(key)
        value = checker(value) if checker is not None else value
        if value is not None:
            out[key] = value
    if sum(out.get(k) is not None for k in ("pip", "uv", "conda")) > 1:
        raise ValueError(f"{owner}: The 'pip' field, 'uv' field, and 'conda' field of runtime_env cannot be "
                         f"specified at the same time; give one of them.")
    return out or None


def check_supported(env: dict | None, fields: frozenset, backend: str, owner: str) -> None:
    """Refuse fields the backend cannot set up, naming them (conda, container, image_uri on the built-in ones)."""
    if not env:
        return
    missing = sorted(k for k in env if k not in fields and not k.startswith(PRIVATE_PREFIX))
    if missing:
        hints = "; ".join(f"{k}: {_UNSUPPORTED_HINT[k]}" for k in missing if k in _UNSUPPORTED_HINT)
        raise ValueError(f"{owner}: runtime_env field(s) {', '.join(map(repr, missing))} are not supported by the "
                         f"{backend!r} backend (it sets up {', '.join(sorted(fields))})"
                         f"{'; ' + hints if hints else ''}. The 'ray' backend passes every field to Ray.")


def _is_uri(text: str) -> bool:
    return "://" in text


def _path(value, field: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"`{field}` must be a string, got {type(value)}.")
    if not _is_uri(value) and not os.path.exists(value):
        raise ValueError(f"{value} is not a valid path.")
    return value


def _working_dir(value):
    path = _path(value, "working_dir")
    if not _is_uri(path) and os.path.isfile(path) and not path.endswith(".zip"):
        raise ValueError(f"working_dir {path} is a file that is not a .zip; give a folder or a .zip archive.")
    return path


def _py_modules(value):
    if not isinstance(value, list):
        raise TypeError(f"`py_modules` must be a list of strings, got {type(value)}.")
    out = []
    for module in value:
        if not isinstance(module, str):
            raise TypeError(f"`py_module` must be a string, got {type(module)}.")
        path = _path(module, "py_module")
        if not _is_uri(path) and os.path.isfile(path) and not path.endswith((".py", ".zip", ".whl")):
            raise ValueError(f"py_modules entry must be a .py file, a directory, a .zip or a .whl file; got {path}")
        out.append(path)
    return out or None


def _excludes(value):
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value or None
    raise TypeError(f"runtime_env['excludes'] must be of type List[str], got {type(value)}")


def _env_vars(value):
    if not isinstance(value, dict):
        raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], got {type(value)}")
    for key, val in value.items():
        if not isinstance(key, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], but the key {key} is of "
                            f"type {type(key)}")
        if not isinstance(val, str):
            raise TypeError(f"runtime_env['env_vars'] must be of type Dict[str, str], but the value {val} is of "
                            f"type {type(val)}")
    return dict(value) or None


def _requirements(field: str):
    """Ray's ``pip``/``uv`` forms: a list of requirements, a requirements file, or a dict with ``packages``."""
    extra = {"pip": {"pip_check", "pip_install_options", "pip_version"},
             "uv": {"uv_check", "uv_version", "uv_pip_install_options"}}[field]

    def check(value):
        if isinstance(value, str):
            result = {"packages": _read_requirements(value)}
        elif isinstance(value, list) and all(isinstance(dep, str) for dep in value):
            result = {"packages": list(value)}
        elif isinstance(value, dict):
            unknown = set(value) - {"packages"} - extra
            if unknown:
                raise ValueError(f"runtime_env['{field}'] can only have these fields: packages, "
                                 f"{', '.join(sorted(extra))}, but got: {list(value)}")
            if "packages" not in value:
                raise ValueError(f"runtime_env['{field}'] must include field 'packages', but got {value}")
            result = dict(value)
            packages = value["packages"]
            if isinstance(packages, str):
                result["packages"] = _read_requirements(packages)
            elif not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
                raise ValueError(f"runtime_env['{field}']['packages'] must be of type str of list, got: "
                                 f"{type(packages)}")
        else:
            raise TypeError(f"runtime_env['{field}'] must be of type str or List[str], got {type(value)}")
        if field == "pip":
            result.setdefault("pip_check", False)
        result["packages"] = list(OrderedDict.fromkeys(result["packages"]))
        return result if result["packages"] else None
    return check


def _read_requirements(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise ValueError(f"{os.path.abspath(path)} is not a valid file")
    with open(path) as file:
        return [line.strip() for line in file if line.strip() and not line.strip().startswith("#")]


def _setup_hook(value):
    if isinstance(value, str) or callable(value):
        return value
    raise TypeError(f"runtime_env['worker_process_setup_hook'] must be a callable or an import path "
                    f"('module.function'), got {type(value)}.")


_CHECKERS = {
    "working_dir": _working_dir, "py_modules": _py_modules, "excludes": _excludes, "env_vars": _env_vars,
    "pip": _requirements("pip"), "uv": _requirements("uv"), "worker_process_setup_hook": _setup_hook,
    "config": RuntimeEnvConfig.parse_and_validate_runtime_env_config,
}


# --------------------------------------------------------------------------- merging

def merge(parent: dict | None, child: dict | None) -> dict | None:
    """Ray's merge of a parent's environment (the job's, or the calling task's) with a task's or actor's:
    the child's fields replace the parent's, ``env_vars`` are merged name by name (the child's win)."""
    if not child:
        return parent or None
    if not parent:
        return child
    out = {**parent, **child}
    env_vars = {**(parent.get("env_vars") or {}), **(child.get("env_vars") or {})}
    if env_vars:
        out["env_vars"] = env_vars
    packages = {**(parent.get(PACKAGES_KEY) or {}), **(child.get(PACKAGES_KEY) or {})}
    if packages:
        out[PACKAGES_KEY] = packages
    return out


__all__ = ["RuntimeEnv", "RuntimeEnvConfig"]
