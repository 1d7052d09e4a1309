"""The public functions: ``init``, ``remote``, ``get``, ``put``, ``wait`` and the rest.

Each is a thin call into the current :class:`~anyray.runtime.Runtime`.
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import threading
import uuid
from typing import Any

from . import current as _current
from . import log as _log
from . import runtime as _rt
from . import runtime_env as _runtime_env
from . import runtime_env_setup as _runtime_env_setup
from .actor import ActorClass, method
from .context import current_task
from .ports.backend import BackendConfig
from .remote_function import RemoteFunction
from .runtime_context import RuntimeContext

DEFAULT_BACKEND = "multiprocess"

# Ray keywords that change nothing about what a program computes: accepted by every
# backend, passed on to the backends that declare them (a Ray backend wants them).
_COSMETIC_RAY_OPTIONS = frozenset({
    "include_dashboard", "dashboard_host", "dashboard_port", "logging_level", "logging_format",
    "log_to_driver", "configure_logging", "_temp_dir", "_system_config", "_metrics_export_port",
    "object_spilling_directory",
})

_init_lock = threading.RLock()
_atexit_registered = False


class InitContext:
    """What ``init`` returns: the backend's name and addresses; a context manager that shuts down."""

    def __init__(self, backend: str, info: dict):
        self.backend = backend
        self.address = info.get("address")
        self.node_id = info.get("node_id")
        self.dashboard_url = info.get("dashboard_url")
        self.dashboard_token_file = info.get("dashboard_token_file")  # a driver's own dashboard's token
        self.address_info = {"address": self.address, "node_id": self.node_id, "backend": backend}

    def __getitem__(self, key):
        return getattr(self, key) if key in ("backend", "address", "node_id", "dashboard_url") \
            else self.address_info[key]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()

    def disconnect(self):
        shutdown()

    def __repr__(self) -> str:
        return f"InitContext(backend={self.backend!r}, address={self.address!r})"


_ADDRESS_VARIABLES = ("ANYRAY_ADDRESS", "RAY_ADDRESS")  # where init() looks for an address when given none
_ADDRESS_BACKEND = "cluster"  # what an address selects when no backend is named
_MULTI_NODE = "multi_node"  # the capability of backends that connect to clusters (Capability.MULTI_NODE)


def _looks_like_address(text: str) -> bool:
    """``"auto"``, a URL, or ``HOST:PORT``: what Ray takes as ``init``'s first (address) argument."""
    if text == "auto" or "://" in text:
        return True
    host, sep, port = text.rpartition(":")
    return bool(sep and host and port.isdigit())


def _redacted(address: str) -> str:
    import re

    return re.sub(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@", r"\1***@", address)


def _normalize_address(address, redis_address):
    """The address ``init`` was given (``redis_address=`` is Ray's early name for it), or None."""
    if redis_address is not None:
        if address is not None:
            raise ValueError("Pass either address= or the older redis_address=, not both.")
        if not isinstance(redis_address, str):
            raise TypeError(f"init(): redis_address must be 'HOST:PORT', got {type(redis_address).__name__}.")
        address = redis_address  # HOST:PORT of the cluster's Redis, or of a node: the cluster backend probes it
    if address is not None and not isinstance(address, str):
        raise TypeError(f"init(): address must be a string ('auto', 'HOST:PORT', 'redis://...'), "
                        f"got {type(address).__name__}.")
    return address.strip() or None if address is not None else None


def _address_from_environment() -> tuple[str | None, str | None]:
    for variable in _ADDRESS_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value:
            return value, variable
    return None, None


def _choose_backend(backend, address, local_mode) -> tuple[str, str | None, str | None]:
    """The backend's name, the address, and where the address came from (for messages)."""
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"init(): backend must be a backend name (str), got {type(backend).__name__}. "
                        f"Did you mean init(address=...)?")
    if backend is not None and _looks_like_address(backend):
        from .plugins import _entry_points  # here: worker processes never load backends (nor pluggy)

        if backend not in _entry_points():  # Ray's first parameter is the address: init("auto")
            if address is not None:
                raise ValueError(f"init({_redacted(backend)!r}, address=...): the first argument is an address too "
                                 f"(no backend is named so); pass one address.")
            backend, address = None, backend
    origin = "address="
    if address is None:
        address, variable = _address_from_environment()
        origin = variable and f"${variable}"
    if local_mode:
        if backend not in (None, "local"):
            raise ValueError(f"local_mode=True means backend='local'; it conflicts with backend={backend!r}.")
        backend = "local"
    name = backend or os.environ.get("ANYRAY_BACKEND") or None
    if name is None:
        name = _ADDRESS_BACKEND if address is not None else DEFAULT_BACKEND
    return name, address, origin


def _whose_options(options) -> str:
    """Which installed backends take ``options`` (said when one is given to another backend)."""
    from .plugins import list_backends

    owners = {o: sorted(b.name for b in (item.backend for item in list_backends()) if b and o in b.accepted_options)
              for o in options}
    said = [f"{o!r} is an option of the {' and '.join(map(repr, names))} backend{'s' if len(names) > 1 else ''}"
            for o, names in owners.items() if names]
    return f" ({'; '.join(said)}.)" if said else ""


def _submitted_job_env(runtime_env):
    """In a submitted job (``anyray job submit``), the job's runtime_env, under what ``init`` was given (as
    Ray's ``RAY_JOB_CONFIG_JSON_ENV_VAR``): its working_dir reaches every task of the job."""
    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not injected:
        return runtime_env
    import json

    submitted = json.loads(injected).get("runtime_env") or {}
    return {**submitted, **(runtime_env or {})} if submitted else runtime_env


def init(backend: str | None = None, *, address: str | None = None, num_cpus: float | None = None,
         num_gpus: float | None = None, resources: dict | None = None, object_store_memory: int | None = None,
         namespace: str | None = None, ignore_reinit_error: bool = False, local_mode: bool = False,
         redis_address: str | None = None, _redis_password: str | None = None, runtime_env: dict | None = None,
         **backend_options) -> InitContext:
    """Start (or connect to) a backend for this process. See API.md for every option.

    As in Ray, the first argument may be the address (``init("auto")``, ``init("HOST:PORT")``) unless it
    names an installed backend; an address (given, or ``$ANYRAY_ADDRESS``, else ``$RAY_ADDRESS``) with no
    backend named (``backend=`` or ``$ANYRAY_BACKEND``) selects the cluster backend. ``runtime_env``: the
    job's environment, which every task and actor of the job runs in (merged with their own)."""
    global _atexit_registered
    job_env = _runtime_env.validate(_submitted_job_env(runtime_env), "init()")
    address = _normalize_address(address, redis_address)
    name, address, origin = _choose_backend(backend, address, local_mode)
    with _init_lock:
        current = _rt.current_runtime()
        if current is not None:
            if ignore_reinit_error:
                return InitContext(current.backend.name, current.backend.info())
            raise RuntimeError("anyray.init() was called twice: this process is already connected to the "
                               f"{current.backend.name!r} backend. Pass ignore_reinit_error=True to reuse it, "
                               "or call anyray.shutdown() first.")
        from .plugins import load_backend  # here: worker processes never load backends (nor pluggy)

        backend_cls = load_backend(name)
        if address is not None and _MULTI_NODE not in backend_cls.capabilities:
            raise ValueError(
                f"The {name!r} backend runs on this machine only and connects to no cluster, but {origin} gives "
                f"the address {_redacted(address)!r}. To connect to that cluster, name no backend (an address alone "
                f"selects the cluster backend) or name backend='cluster'; to run here, "
                + ("drop address=." if origin == "address=" else f"unset {origin[1:]}."))
        if _redis_password is not None:
            if not isinstance(_redis_password, str):
                raise TypeError(f"init(): _redis_password must be a string, got {type(_redis_password).__name__}.")
            if address is None:
                raise ValueError("init(): _redis_password= is the password of a running cluster's Redis; pass the "
                                 "cluster's address too (address= or redis_address=), or drop it.")
            if "_redis_password" not in backend_cls.accepted_options:
                raise TypeError(f"init(): the {name!r} backend takes no _redis_password= (it has no Redis); drop it.")
            backend_options["_redis_password"] = _redis_password
        accepted = backend_cls.accepted_options
        if runtime_env is not None and "runtime_env" in accepted:  # an engine that sets environments up itself
            backend_options["runtime_env"] = runtime_env
        unknown = sorted(set(backend_options) - accepted - _COSMETIC_RAY_OPTIONS)
        if unknown:
            raise TypeError(f"init() got unexpected keyword argument(s) {', '.join(map(repr, unknown))} for the "
                            f"{name!r} backend; it accepts: {', '.join(sorted(accepted)) or 'no extra options'}."
                            + _whose_options(unknown))
        if "logging_level" in backend_options and backend_options.get("configure_logging", True):
            _log.set_driver_level(backend_options["logging_level"])  # Ray's: the driver's own logger
        dashboard_wanted = _check_dashboard_options(backend_cls, backend_options)
        if resources is not None and (not isinstance(resources, dict) or
                                      not all(isinstance(k, str) for k in resources)):
            raise TypeError(f"init(): resources must be a dict of name to amount, got {resources!r}.")
        for label, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus),
                             *((f"resources[{k!r}]", v) for k, v in (resources or {}).items())):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"init(): {label} must be a number >= 0, got {value!r}.")
        if resources and ({"CPU", "GPU"} & set(resources)):
            raise ValueError("init(): use num_cpus / num_gpus instead of 'CPU' / 'GPU' in resources.")
        system_config = _system_config_of(backend_options)
        config = BackendConfig(
            address=address, num_cpus=num_cpus, num_gpus=num_gpus, resources=dict(resources or {}),
            object_store_memory=object_store_memory,
            namespace=namespace if namespace is not None else f"anonymous-{uuid.uuid4().hex[:12]}",
            options={k: v for k, v in backend_options.items() if k in accepted})
        if system_config:  # Ray's tuning keys; a node backend reads its spilling settings there
            config.options["_system_config"] = system_config
        runtime = _rt.Runtime(backend_cls, config)
        try:
            _runtime_env_setup.start_job(runtime, job_env)
        except BaseException:
            runtime.shutdown()
            raise
        _rt.set_current(runtime)
        dashboard = None
        if dashboard_wanted:
            try:
                dashboard = _start_dashboard(runtime, backend_options)
            except BaseException:
                _rt.set_current(None)
                runtime.shutdown()
                raise
        if _runtime_env_setup.installs_eagerly(runtime):  # the job's pip/uv environment is built from now on
            remote(num_cpus=0)(_prepare_environment).remote()
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        info = runtime.backend.info()
        if dashboard is not None:
            info = {**info, "dashboard_url": dashboard.url, "dashboard_token_file": dashboard.token_file}
        return InitContext(name, info)


def _check_dashboard_options(backend_cls, options: dict) -> bool:
    """Whether this driver serves a dashboard of its own (``include_dashboard=True`` on a backend that does not
    take the option itself and runs on this machine: a cluster's head serves the cluster's)."""
    include, host, port = (options.get(k) for k in ("include_dashboard", "dashboard_host", "dashboard_port"))
    if include is not None and not isinstance(include, bool):
        raise TypeError(f"init(): include_dashboard must be True, False or None, got {include!r}.")
    if host is not None and (not isinstance(host, str) or not host):
        raise TypeError(f"init(): dashboard_host must be an address to listen on such as '127.0.0.1', got {host!r}.")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ValueError(f"init(): dashboard_port must be a port number 0-65535 (0: any free one), got {port!r}.")
    return bool(include) and "include_dashboard" not in backend_cls.accepted_options \
        and _MULTI_NODE not in backend_cls.capabilities


def _start_dashboard(runtime, options: dict):
    from anyray.adapters.dashboard import start_for_driver  # loaded only when a dashboard is wanted

    dashboard = start_for_driver(runtime, options.get("dashboard_host"), options.get("dashboard_port"))
    runtime.dashboard = dashboard
    print(f"(anyray) dashboard at {dashboard.url} (log in with the token in {dashboard.token_file})",
          file=sys.stderr, flush=True)
    return dashboard


def _system_config_of(options: dict) -> dict:
    """Ray's ``_system_config`` (a dict), with ``object_spilling_directory=`` (Ray's hidden ``init`` keyword)
    folded in."""
    system_config = options.get("_system_config")
    if system_config is not None and not isinstance(system_config, dict):
        raise TypeError(f"init(): _system_config must be a dict of Ray's setting names to values, got "
                        f"{type(system_config).__name__}.")
    system_config = dict(system_config or {})
    directory = options.pop("object_spilling_directory", None)
    if directory is not None:
        system_config["object_spilling_directory"] = directory
    return system_config


def shutdown() -> None:
    """Stop the backend started by ``init``; a later ``init`` starts afresh."""
    with _init_lock:
        runtime = _rt.current_runtime()
        if runtime is None:
            return
        _rt.set_current(None)
        dashboard = getattr(runtime, "dashboard", None)
        if dashboard is not None:
            dashboard.close()
        try:
            runtime.shutdown()
        finally:
            _runtime_env_setup.end_job(runtime)


def is_initialized() -> bool:
    return _rt.current_runtime() is not None


def _start_default() -> _rt.Runtime:
    """The first ``.remote()``, ``get`` or ``put`` without ``init`` starts the default backend, as Ray does."""
    with _init_lock:
        if _rt.current_runtime() is None:
            init()
        return _rt.current_runtime()


_current.set_autostart(_start_default)
_runtime = _current.require_runtime


def remote(*args, **options):
    """``@remote`` or ``@remote(num_cpus=..., ...)`` on a function or a class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("@remote takes either one function or class, or keyword options only: "
                        "@remote or @remote(num_cpus=2).")
    return lambda target: _make_remote(target, options)


def _make_remote(target, options):
    if inspect.isclass(target):
        return ActorClass(target, options)
    if inspect.isfunction(target) or inspect.ismethod(target) or callable(target):
        return RemoteFunction(target, options)
    raise TypeError(f"@remote expects a function or a class, got {type(target).__name__}.")


def get(object_refs, *, timeout: float | None = None):
    return _runtime().get(object_refs, timeout)


def put(value: Any, **_ignored):
    return _runtime().put(value)


def wait(object_refs, *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True):
    return _runtime().wait(object_refs, num_returns, timeout, fetch_local)


def cancel(object_ref, *, force: bool = False, recursive: bool = True) -> None:
    _runtime().cancel(object_ref, force, recursive)


def kill(actor, *, no_restart: bool = True) -> None:
    _runtime().kill(actor, no_restart)


def get_actor(name: str, namespace: str | None = None):
    return _runtime().get_actor(name, namespace)


def list_named_actors(all_namespaces: bool = False):
    rt = _runtime()
    found = rt.scheduler.list_named_actors(None if all_namespaces else rt.namespace)
    if all_namespaces:
        return [{"name": name, "namespace": ns} for ns, name in found]
    return [name for _, name in found]


def cluster_resources() -> dict[str, float]:
    return _runtime().scheduler.cluster_resources()


def available_resources() -> dict[str, float]:
    return _runtime().scheduler.available_resources()


def nodes() -> list[dict]:
    return _runtime().scheduler.nodes()


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(_runtime())


def get_gpu_ids() -> list:
    ctx = current_task.get()
    return list(ctx.gpu_ids) if ctx is not None else []


def timeline(filename: str | None = None):
    """Chrome trace events (load in chrome://tracing or Perfetto); written to ``filename`` if given."""
    events = _runtime().events
    if filename is not None:
        events.dump(filename)
        return None
    return events.trace_events()


def error_info() -> list[dict]:
    """The failed tasks of this job: time, task_id, function, error_type, message."""
    return _runtime().events.error_info()


__all__ = [
    "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait", "cancel", "kill",
    "get_actor", "list_named_actors", "cluster_resources", "available_resources", "nodes",
    "get_runtime_context", "get_gpu_ids", "timeline", "error_info", "InitContext",
]


def _prepare_environment() -> None:
    """Run once in the job's environment at ``init`` (``eager_install``): the node builds it meanwhile."""
