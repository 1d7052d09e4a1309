"""Setting up a runtime_env: on the submitting side, the environment a task or actor runs in (its own merged
with its parent's, local folders packed into the object store once per content hash); in the process that
runs it, the environment applied (env_vars, the working_dir unpacked and made the cwd, py_modules on
``sys.path``, the setup hook run once).

A packed folder is a zip put into the object store by the driver; the environment names it by a URI
(``anyray://pkg_<hash>.zip``) and carries the object's id under a private key, so a worker on any node
fetches it as it fetches any object, and unpacks it once per content hash into its node's resources folder.
"""

from __future__ import annotations

import contextvars
import hashlib
import importlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import traceback
from fnmatch import fnmatch

import cloudpickle

from .exceptions import RuntimeEnvSetupError
from .object_ref import ObjectRef
from .runtime_env import BUILT_IN_FIELDS, PACKAGES_KEY, check_supported, merge, public

KEY = "_anyray_key"  # private: what tells environments apart for the worker pool, computed once at submit
URI_PREFIX = "anyray://pkg_"
_IN_PROCESS = "in_process"  # Capability.IN_PROCESS: tasks are threads of the driver
_PER_TASK = "runtime_env"  # Capability.RUNTIME_ENV: each task and actor may have an environment of its own
_PIP = "runtime_env_pip"  # Capability.RUNTIME_ENV_PIP: pip and uv environments
_MERGED_KEPT = 512  # environments resolved before, kept per runtime
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # every entry's date: the same folder packs to the same bytes

_process_env: dict | None = None  # the environment this worker process was set up for (applied once)
# the environment of the task or actor call running in this thread (or asyncio task), where a backend runs work
# of several environments in one process (the local backend applies each around its work)
running_env: contextvars.ContextVar[dict | None] = contextvars.ContextVar("anyray_runtime_env", default=None)


def env_of_caller(runtime) -> dict | None:
    """The environment new work inherits here: the running call's (in-process backends), this worker process's,
    else the job's (in a driver)."""
    return running_env.get() or _process_env or getattr(runtime, "job_runtime_env", None)


def process_env() -> dict | None:
    """The environment this process was set up for: a worker's, or the job's on an in-process backend."""
    return _process_env


def shown(runtime) -> dict:
    """``get_runtime_context().runtime_env``: the caller's environment as the user wrote it (merged), or as
    the engine reports it where the engine sets environments up."""
    engine = getattr(runtime.backend, "current_runtime_env", None)
    return engine() if engine is not None else public(env_of_caller(runtime))


# --------------------------------------------------------------------------- the submitting side

class _Resolved:
    """Per runtime: environments resolved before (by the identity of what was merged), packed folders."""

    def __init__(self):
        self.lock = threading.Lock()
        self.merged: dict = {}     # (id(own), id(parent)) -> (own, parent, env)
        self.packed: dict = {}     # (path, excludes, signature) -> uri
        self.refs: dict = {}       # uri -> the ObjectRef holding its zip (kept for the job's life)


def _state(runtime) -> _Resolved:
    state = getattr(runtime, "_runtime_envs", None)
    if state is None:
        state = runtime._runtime_envs = _Resolved()
    return state


def start_job(runtime, env: dict | None) -> None:
    """The job's environment (``init(runtime_env=...)``), packed once; applied to this process at once on an
    in-process backend, whose tasks are threads of it."""
    backend = runtime.backend
    if not env or getattr(backend, "passes_runtime_env", False):
        return
    env = pack(runtime, env)
    _refuse_python_envs(env, backend, "init()")
    check_supported(env, _fields(backend), backend.name, "init()")
    env[KEY] = key_of(env)
    runtime.job_runtime_env = env
    refs = {ref.hex(): ref for ref in _state(runtime).refs.values()}

    def fetch(object_hex: str) -> bytes:
        return runtime.get(refs[object_hex])
    engine = getattr(backend, "set_job_runtime_env", None)  # a backend that applies it in its own workers
    if engine is not None:
        engine(env, fetch)
    elif _IN_PROCESS in backend.capabilities:
        runtime._runtime_env_undo = apply(env, fetch)


def installs_eagerly(runtime) -> bool:
    """Whether ``init`` should have the job's pip/uv environment built at once (Ray's ``config.eager_install``,
    True by default) on a backend that builds environments where the work runs."""
    env = getattr(runtime, "job_runtime_env", None)
    return bool(env and (env.get("pip") or env.get("uv")) and _PER_TASK in runtime.backend.capabilities
                and (env.get("config") or {}).get("eager_install", True))


def end_job(runtime) -> None:
    """Put back what the job's environment changed in this process (an in-process backend's)."""
    steps = getattr(runtime, "_runtime_env_undo", None)
    if steps:
        runtime._runtime_env_undo = None
        undo(steps)


def _fields(backend) -> frozenset:
    """The runtime_env fields ``backend`` sets up: its own list, else the built-in backends' (pip and uv
    where it declares it builds Python environments)."""
    fields = getattr(backend, "runtime_env_fields", BUILT_IN_FIELDS)
    return fields if _PIP in backend.capabilities else fields - {"pip", "uv"}


def _refuse_python_envs(env: dict | None, backend, owner: str) -> None:
    """pip and uv where ``backend`` builds no Python environments: say which backends do."""
    asked = [name for name in ("pip", "uv") if env and env.get(name)]
    if asked and _PIP not in backend.capabilities and set(asked) - _fields(backend):
        where = ("runs every task and actor in this Python process, which cannot switch to another Python "
                 "environment" if _IN_PROCESS in backend.capabilities else "builds no Python environments")
        raise ValueError(
            f"{owner}: runtime_env {' and '.join(map(repr, asked))} {'needs' if len(asked) == 1 else 'need'} a "
            f"Python environment of its own, and "
            f"the {backend.name!r} backend {where}. Use backend='multiprocess' (the default) or 'cluster', which "
            f"build a virtual environment per requirement set, or install the packages into this environment "
            f"before init().")


def with_env(runtime, options: dict, owner: str) -> dict:
    """``options`` of a task or actor submitted now, with the environment it runs in (unchanged when
    neither it nor its caller has one)."""
    own = options.get("runtime_env")
    if own is None and env_of_caller(runtime) is None:
        return options
    env = resolve(runtime, own, owner)
    return options if env is own else {**options, "runtime_env": env}


def with_packages(runtime, options: dict, deps: list) -> list:
    """A task's or actor's dependencies, with the packages of its environment where its worker fetches them
    (a backend with a worker per environment): the node it runs on has them before it starts, wherever they
    were put (a cluster pulls them as it pulls any argument)."""
    env = options.get("runtime_env")
    packages = env.get(PACKAGES_KEY) if env else None
    if not packages or _PER_TASK not in runtime.backend.capabilities:
        return deps
    refs = _state(runtime).refs  # the driver's own refs; a worker names them by id
    return deps + [refs[uri] if uri in refs else ObjectRef(bytes.fromhex(oid)) for uri, oid in packages.items()]


def resolve(runtime, own: dict | None, owner: str) -> dict | None:
    """The environment a task or actor submitted now runs in (None for none): ``own`` merged with the
    caller's, folders packed; refused here if the backend cannot set up one of its fields."""
    parent = env_of_caller(runtime)
    if not own and not parent:
        return None
    backend = runtime.backend
    if getattr(backend, "passes_runtime_env", False):
        return own  # the engine merges and sets up environments itself (Ray)
    if not own:
        return parent  # resolved when it was submitted (or at init)
    state = _state(runtime)
    cache_key = (id(own), id(parent))
    hit = state.merged.get(cache_key)
    if hit is not None and hit[0] is own and hit[1] is parent:
        return hit[2]
    env = merge(parent, pack(runtime, own) if own else None)
    _refuse_python_envs(env, backend, owner)
    check_supported(env, _fields(backend), backend.name, owner)
    if env is not None:
        env = {**env, KEY: key_of(env)}
        if _PER_TASK not in backend.capabilities and env[KEY] != (parent or {}).get(KEY):
            raise NotImplementedError(
                f"{owner}: the {backend.name!r} backend runs tasks and actors as threads of shared processes, "
                f"which share one environment, so it runs them all in the job's runtime_env "
                f"(init(runtime_env=...)) and cannot give one its own. Put the environment in "
                f"init(runtime_env=...), or use a backend with a worker process per environment (the default "
                f"'multiprocess', or 'cluster').")
    if len(state.merged) >= _MERGED_KEPT:  # .options(runtime_env=...) in a loop makes a new dict each time
        state.merged.clear()
    state.merged[cache_key] = (own, parent, env)
    return env


def key_of(env: dict) -> str:
    """Two environments with the same key run in the same workers (``config`` aside, as in Ray)."""
    hook = env.get("worker_process_setup_hook")
    text = {k: v for k, v in env.items() if k not in ("config", KEY, "worker_process_setup_hook")}
    if callable(hook):
        text["worker_process_setup_hook"] = hashlib.sha256(cloudpickle.dumps(hook)).hexdigest()
    elif hook is not None:
        text["worker_process_setup_hook"] = hook
    return hashlib.sha256(json.dumps(text, sort_keys=True, default=str).encode()).hexdigest()[:24]


def pack(runtime, env: dict) -> dict:
    """``env`` with its local working_dir and py_modules replaced by URIs of zips in the object store."""
    out = dict(env)
    packages = dict(env.get(PACKAGES_KEY) or {})
    excludes = tuple(env.get("excludes") or ())
    working_dir = env.get("working_dir")
    if working_dir and not working_dir.startswith(URI_PREFIX):
        out["working_dir"] = _pack_path(runtime, working_dir, excludes, packages, keep_name=False)
    if env.get("py_modules"):
        out["py_modules"] = [m if m.startswith(URI_PREFIX) else _pack_path(runtime, m, (), packages, keep_name=True)
                             for m in env["py_modules"]]
    if packages:
        out[PACKAGES_KEY] = packages
    return out


def _pack_path(runtime, path: str, excludes: tuple, packages: dict, keep_name: bool) -> str:
    if "://" in path:
        raise ValueError(f"runtime_env: remote URIs such as {path!r} are not fetched by this backend; give a "
                         f"local folder or a local .zip (the 'ray' backend passes URIs to Ray).")
    state = _state(runtime)
    path = os.path.abspath(path)
    signature = _signature(path, excludes)
    key = (path, excludes, keep_name, signature)
    with state.lock:
        uri = state.packed.get(key)
        if uri is None:
            data = _zip_bytes(path, excludes, keep_name)
            suffix = ".whl" if path.endswith(".whl") else ".zip"
            uri = f"{URI_PREFIX}{hashlib.sha256(data).hexdigest()[:32]}{suffix}"
            if uri not in state.refs:
                state.refs[uri] = runtime.put(data)
            state.packed[key] = uri
    packages[uri] = state.refs[uri].hex()
    return uri


def _excluded(relative: str, excludes: tuple) -> bool:
    parts = relative.split("/")
    for pattern in excludes:
        pattern = pattern.rstrip("/")
        if fnmatch(relative, pattern) or fnmatch(relative, pattern.lstrip("/")) or \
                any(fnmatch(part, pattern) for part in parts):
            return True
    return False


def _files(root: str, excludes: tuple):
    for folder, dirs, files in os.walk(root):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_folder = "" if rel_folder == "." else rel_folder + "/"
        dirs[:] = sorted(d for d in dirs if not _excluded(rel_folder + d, excludes))
        for name in sorted(files):
            if not _excluded(rel_folder + name, excludes):
                yield rel_folder + name, os.path.join(folder, name)


def _signature(path: str, excludes: tuple) -> tuple:
    """Cheap to compute: a folder is packed again only when a file in it changed (size or time)."""
    if not os.path.isdir(path):
        stat = os.stat(path)
        return ((stat.st_size, stat.st_mtime_ns),)
    return tuple((rel, os.stat(full).st_size, os.stat(full).st_mtime_ns) for rel, full in _files(path, excludes))


def _zip_bytes(path: str, excludes: tuple, keep_name: bool) -> bytes:
    if not os.path.isdir(path) and not path.endswith(".py"):
        with open(path, "rb") as file:  # a .zip or .whl, shipped as it is
            return file.read()
    buffer = io.BytesIO()
    prefix = os.path.basename(path.rstrip(os.sep)) + "/" if keep_name else ""
    if not os.path.isdir(path):  # a module file: the folder it unpacks in goes on sys.path
        files = [(os.path.basename(path), path)]
        prefix = ""
    else:
        files = _files(path, excludes)
    import zipfile  # here: every process loads this module, few ship packages

    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for rel, full in files:
            info = zipfile.ZipInfo(prefix + rel, _ZIP_DATE)
            info.external_attr = (os.stat(full).st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(full, "rb") as file:
                archive.writestr(info, file.read())
    return buffer.getvalue()


# --------------------------------------------------------------------------- the running side

def resources_dir() -> str:
    """Where this machine unpacks packages, once per content hash."""
    return os.environ.get("ANYRAY_RUNTIME_RESOURCES") or \
        os.path.join(tempfile.gettempdir(), f"anyray-runtime-resources-{os.getuid()}")


def private_dir(path: str) -> None:
    """Make ``path`` a folder only this user can enter (mode 0700), or refuse one another user owns."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user: set ANYRAY_RUNTIME_RESOURCES to a folder of yours.")
    os.chmod(path, 0o700)


def unpacked(uri: str, fetch, root: str) -> str:
    """The folder ``uri``'s zip is unpacked in under ``root``, unpacking it (fetched by ``fetch(uri)``) the
    first time; safe when several processes race (each unpacks aside, one rename wins)."""
    name = uri[len("anyray://"):].rsplit(".", 1)[0]
    target = os.path.join(root, name)
    if os.path.isdir(target):
        return target
    private_dir(root)
    data = fetch(uri)
    aside = tempfile.mkdtemp(prefix=f".{name}-", dir=root)
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(aside)
    try:
        os.rename(aside, target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(aside, ignore_errors=True)
    return target


def apply(env: dict, fetch, root: str | None = None, hook: bool = True, process: bool = True) -> list[tuple]:
    """Set up ``env`` in this process; return what to undo (for an in-process backend). Raises
    ``RuntimeEnvSetupError`` saying which part failed and why, with what it had changed put back.
    ``hook=False`` leaves the setup hook to the caller; ``process=False`` sets it up for one call, not as
    the process's environment (an in-process backend applies each task's around it)."""
    global _process_env
    root = root or resources_dir()
    undo: list[tuple] = []
    packages = env.get(PACKAGES_KEY) or {}

    def fetch_uri(uri: str) -> bytes:
        if uri not in packages:
            raise RuntimeEnvSetupError(f"runtime_env package {uri} is not known to this job.")
        return fetch(packages[uri])
    try:
        for name, value in (env.get("env_vars") or {}).items():
            undo.append(("env", name, os.environ.get(name)))
            os.environ[name] = os.path.expandvars(value) if "${" in value else value
        for module in env.get("py_modules") or ():
            folder = unpacked(module, fetch_uri, root)
            sys.path.insert(0, folder)
            undo.append(("path", folder))
        working_dir = env.get("working_dir")
        if working_dir:
            folder = unpacked(working_dir, fetch_uri, root)
            sys.path.insert(0, folder)
            undo.append(("path", folder))
            undo.append(("cwd", os.getcwd()))
            os.chdir(folder)
        setup_hook = env.get("worker_process_setup_hook") if hook else None
        if setup_hook is not None:
            run_hook(setup_hook)
    except RuntimeEnvSetupError:
        undo_steps(undo)
        raise
    except Exception as exc:  # noqa: BLE001 - the task's caller gets what failed
        undo_steps(undo)
        raise RuntimeEnvSetupError(f"{type(exc).__name__}: {exc}") from None
    if process:
        _process_env = env
    return undo


def run_hook(hook) -> None:
    try:
        if isinstance(hook, str):
            module, _, name = hook.rpartition(".")
            if not module:
                raise ValueError(f"{hook!r} is not an import path; write 'module.function'.")
            hook = getattr(importlib.import_module(module), name)
        hook()
    except Exception as exc:  # noqa: BLE001 - every error of the user's hook fails the task
        raise RuntimeEnvSetupError(
            f"Failed to execute the worker_process_setup_hook {getattr(hook, '__name__', hook)!r}: "
            f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}") from None


apply_runtime_env = apply  # the backend kit's name for it


def runtime_env_packages(env: dict) -> list[str]:
    """The object ids (hex) of the packages ``env`` names, for ``fetch``."""
    return list((env.get(PACKAGES_KEY) or {}).values())


def undo(steps: list[tuple]) -> None:
    """Put back what :func:`apply` changed, last change first; the process has no environment then."""
    global _process_env
    undo_steps(steps)
    _process_env = None


def undo_steps(steps: list[tuple]) -> None:
    """Put back what :func:`apply` changed (an ``("env", name, old value)`` step may be added by the caller),
    last change first."""
    for step in reversed(steps):
        if step[0] == "env":
            if step[2] is None:
                os.environ.pop(step[1], None)
            else:
                os.environ[step[1]] = step[2]
        elif step[0] == "path":
            if step[1] in sys.path:
                sys.path.remove(step[1])
        elif step[0] == "cwd":
            try:
                os.chdir(step[1])
            except OSError:
                pass
