"""Python environments for runtime_env's ``pip`` and ``uv``: one virtual environment per requirement set,
built once per node and reused, layered on the node's own packages.

``ensure_env(tool, value)`` returns the interpreter of an environment that has the requirements installed ON
TOP OF the environment the node runs in: a virtual environment made from the node's base interpreter whose
site-packages holds the requirements, plus a ``.pth`` file that adds the node's own site-packages after it
(processing their ``.pth`` files too, so editable installs of anyray and the user's packages keep working).
So anyray and its dependencies import there, and where a requirement names another version of something the
node has, the environment's copy wins. A worker started from that interpreter (``WorkerPool.start_worker(...,
python=...)``) runs there.

The cache. Each environment lives in ``<cache>/<key>-<random>/`` and is published, once complete, as the
symlink ``<cache>/<key>`` (an atomic rename), where ``key`` hashes the canonical requirement set, the tool's
options and the node's interpreter and site-packages. A build happens in its own directory, under the file
lock ``<cache>/<key>.lock``: of several processes asking for one set at once, one builds and the others wait
for it and reuse what it built; a failed or killed build leaves no published link, and the next builder
removes its directory. The cache is per user (mode 0700): ``ANYRAY_PYTHON_ENVS_DIR``, else
``$XDG_CACHE_HOME/anyray/python_envs``, else ``~/.cache/anyray/python_envs``. Environments are not deleted:
remove the directory to reclaim the space (with no worker running from it).

Installing runs ``<env python> -m pip install -r requirements.txt`` (pip as the node has it; with
``pip_version`` that pip is installed into the environment first), or ``uv pip install --python <env python>
-r requirements.txt`` for ``uv``: the uv the node has (the ``uv`` Python package, else ``uv`` on PATH), else,
as Ray does, the ``uv`` package (``uv_version`` if given) installed with pip into the environment. Index
options given in ``pip_install_options`` (``--index-url``, ``--extra-index-url``, ``-i``) go into the
requirements file, never on a command line, and user:password parts of URLs are masked in every message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import site
import sys
import time

from anyray.exceptions import RuntimeEnvSetupError

from .python_env_build import build_env, install_options, redact

log = logging.getLogger(__name__)

DEFAULT_SETUP_TIMEOUT = 600.0  # seconds: Ray's runtime_env config setup_timeout_seconds
CACHE_ENV = "ANYRAY_PYTHON_ENVS_DIR"
TOOLS = ("pip", "uv")
_PIP_KEYS = {"packages", "pip_check", "pip_install_options", "pip_version"}
_UV_KEYS = {"packages", "uv_check", "uv_version", "uv_pip_install_options"}
_LOCK_POLL = 0.1
_INCLUDE = re.compile(r"^(?:--requirement|-r)\s*=?\s*(\S.*)$")  # a line that includes another requirements file
_COMPLETE = "anyray-env.json"  # written last in a build; a published environment always has it

__all__ = ["DEFAULT_SETUP_TIMEOUT", "default_cache_dir", "ensure_env", "env_key", "find_env", "normalize",
           "python_of"]


def normalize(tool: str, value) -> dict | None:
    """Ray's canonical form of a ``pip`` or ``uv`` runtime_env value, None when it names no package.

    ``value``: a list of requirement strings, the path of a requirements file (read now, on the calling
    machine), or a dict: for pip {"packages": list or file path, "pip_check": bool, "pip_version": str,
    "pip_install_options": [str]}, for uv {"packages": list, "uv_check": bool, "uv_version": str,
    "uv_pip_install_options": [str]}. Returns {"packages": [...], "pip_check": bool, ...} (uv: "uv_check",
    and "uv_pip_install_options" defaulting to Ray's ["--no-cache"]), duplicates removed in order, as Ray's
    ``runtime_env`` shows it, except that a ``-r FILE`` line is replaced by that file's lines, read now (Ray
    reads it where it installs). Raises TypeError or ValueError, with Ray's wording, for anything else.
    """
    if tool not in TOOLS:
        raise ValueError(f"tool must be 'pip' or 'uv', not {tool!r}.")
    check = f"{tool}_check"
    if isinstance(value, (str, os.PathLike)):
        result = {"packages": _read_requirements(os.fspath(value), tool), check: False}
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        result = {"packages": _expand(list(value), os.getcwd(), tool, set()), check: False}
    elif isinstance(value, dict):
        result = _normalize_dict(tool, value)
    else:
        kinds = "str or List[str]" if tool == "pip" else "List[str], or dict"
        raise TypeError(f"runtime_env['{tool}'] must be of type {kinds}, got {type(value)}")
    result["packages"] = list(dict.fromkeys(result["packages"]))
    if not _clean(result["packages"]):
        return None
    return result


def env_key(tool: str, spec: dict) -> str:
    """The content hash naming the environment of a normalised ``spec`` on this node."""
    fields = {"tool": tool, "packages": _clean(spec["packages"]), "check": bool(spec.get(f"{tool}_check")),
              "version": spec.get(f"{tool}_version"), "options": install_options(tool, spec),
              "base": [sys.executable, sys.version, node_site_dirs()]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def default_cache_dir() -> str:
    """Where environments are kept unless ``cache_dir`` says otherwise (see the module's docstring)."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "anyray", "python_envs")


def python_of(env_dir: str) -> str:
    """The interpreter of an environment directory."""
    return os.path.join(env_dir, "bin", "python")


def find_env(tool: str, value, *, cache_dir: str | None = None) -> str | None:
    """The interpreter of the environment for ``value`` if it is built already on this node, else None
    (never builds, never waits)."""
    spec = normalize(tool, value)
    if spec is None:
        return None
    cache = os.path.abspath(cache_dir) if cache_dir else default_cache_dir()
    return _published(os.path.join(cache, env_key(tool, spec)))


def ensure_env(tool: str, value, *, setup_timeout_seconds: float | None = DEFAULT_SETUP_TIMEOUT,
               cache_dir: str | None = None) -> str | None:
    """The path of a Python interpreter whose environment has ``value``'s requirements on top of the node's
    packages, built now if this node has not built that requirement set before (see the module's docstring).

    ``tool``: "pip" or "uv"; ``value``: anything ``normalize`` accepts, or its result. Returns None when
    ``value`` names no package (the node's own interpreter serves). Blocks while it builds, or while another
    process builds the same set (up to ``setup_timeout_seconds`` in all; None or -1: no limit), so call it off
    any thread that must stay responsive. Raises TypeError/ValueError for a malformed value, and
    RuntimeEnvSetupError when the install fails (with the installer's own output), times out, or the cache
    cannot be used; a failure leaves nothing that stops a later build.
    """
    spec = normalize(tool, value)
    deadline = _deadline(setup_timeout_seconds)
    if spec is None:
        return None
    cache = os.path.abspath(cache_dir) if cache_dir else default_cache_dir()
    link = os.path.join(cache, env_key(tool, spec))
    found = _published(link)
    if found is not None:
        return found
    _ensure_private_dir(cache)
    lock_fd = os.open(link + ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        _lock(lock_fd, deadline, setup_timeout_seconds, link)
        found = _published(link)  # built while we waited
        if found is not None:
            return found
        _remove_leftovers(link)
        target = f"{link}-{secrets.token_hex(4)}"
        log.info("building a %s environment for %d requirement(s) in %s", tool, len(spec["packages"]), target)
        try:
            build_env(tool, spec, target, node_site_dirs(), deadline, setup_timeout_seconds)
            with open(os.path.join(target, _COMPLETE), "w") as out:
                json.dump({"tool": tool, "packages": [redact(p) for p in _clean(spec["packages"])]}, out)
            _publish(target, link)
        except OSError as exc:  # the disk, not the installer: still the environment's setup that failed
            shutil.rmtree(target, ignore_errors=True)
            raise RuntimeEnvSetupError(f"Building the Python environment in {target} failed: {exc}") from exc
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return python_of(target)
    finally:
        os.close(lock_fd)  # drops the lock


def node_site_dirs() -> list[str]:
    """The site-packages directories of the environment this process runs in, in its own order, that the
    environments add after theirs."""
    dirs = [d for d in site.getsitepackages() if os.path.isdir(d)]
    if site.ENABLE_USER_SITE:
        user = site.getusersitepackages()
        if os.path.isdir(user) and user in sys.path:
            dirs.append(user)
    # and those a .pth added (the node runs in one of these environments itself: its base's come too)
    dirs += [d for d in sys.path if os.path.basename(d) in ("site-packages", "dist-packages") and os.path.isdir(d)]
    return list(dict.fromkeys(dirs))


# ---- internals


def _read_requirements(path: str, tool: str, seen: set | None = None) -> list[str]:
    """A requirements file's lines, the files it includes (``-r``) read in their place."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a valid file (runtime_env['{tool}'] as a string is the path of a "
                         "requirements file)")
    path = os.path.abspath(path)
    seen = set() if seen is None else seen
    seen.add(path)
    with open(path) as source:
        return _expand(source.read().strip().split("\n"), os.path.dirname(path), tool, seen)


def _expand(lines: list[str], base_dir: str, tool: str, seen: set) -> list[str]:
    """``lines`` with each ``-r FILE`` (relative to ``base_dir``) replaced by that file's lines, read now:
    the set is whole wherever it is installed, and its key changes when an included file does. A file
    included twice is read once; a path with a ${VARIABLE} in it stays as it is, for the installer."""
    out = []
    for line in lines:
        match = _INCLUDE.match(line.strip())
        if match is None or "${" in match.group(1):
            out.append(line)
            continue
        path = os.path.abspath(os.path.join(base_dir, os.path.expanduser(match.group(1).strip())))
        if path not in seen:
            out += _read_requirements(path, tool, seen)
    return out


def _normalize_dict(tool: str, value: dict) -> dict:
    keys = _PIP_KEYS if tool == "pip" else _UV_KEYS
    unknown = set(value) - keys
    if unknown:
        raise ValueError(f"runtime_env['{tool}'] can only have these fields: {', '.join(sorted(keys))}, but got: "
                         f"{list(value)}")
    if "packages" not in value:
        raise ValueError(f"runtime_env['{tool}'] must include field 'packages', but got {value}")
    check, version = f"{tool}_check", f"{tool}_version"
    options = "pip_install_options" if tool == "pip" else "uv_pip_install_options"
    if not isinstance(value.get(check, False), bool):
        raise TypeError(f"runtime_env['{tool}']['{check}'] must be of type bool, got {type(value[check])}")
    if version in value and not isinstance(value[version], str):
        raise TypeError(f"runtime_env['{tool}']['{version}'] must be of type str, got {type(value[version])}")
    if options in value:
        if not isinstance(value[options], list) or not all(isinstance(o, str) for o in value[options]):
            raise TypeError(f"runtime_env['{tool}']['{options}'] must be of type list[str], got {value[options]!r}")
    result = dict(value)
    result[check] = value.get(check, False)
    if tool == "uv":
        result.setdefault(options, ["--no-cache"])
    packages = value["packages"]
    if tool == "pip" and isinstance(packages, (str, os.PathLike)):
        result["packages"] = _read_requirements(os.fspath(packages), tool)
    elif not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
        kinds = "str or list" if tool == "pip" else "list"
        raise ValueError(f"runtime_env['{tool}']['packages'] must be of type {kinds} (of str), got: {packages!r}")
    else:
        result["packages"] = _expand(list(packages), os.getcwd(), tool, set())
    return result


def _clean(packages: list[str]) -> list[str]:
    """The requirement lines that mean something: stripped, no blank or comment lines, no duplicates."""
    lines = (p.strip() for p in packages)
    return list(dict.fromkeys(p for p in lines if p and not p.startswith("#")))


def _deadline(timeout: float | None) -> float | None:
    if timeout is None or timeout == -1:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ValueError(f"setup_timeout_seconds must be a positive number of seconds or -1 (no limit), "
                         f"got {timeout!r}")
    return time.monotonic() + timeout


def _published(link: str) -> str | None:
    """The interpreter of a published environment, None if there is none (or what is there is broken)."""
    try:
        target = os.path.join(os.path.dirname(link), os.readlink(link))
    except OSError:
        return None
    python = python_of(target)
    if os.path.isfile(os.path.join(target, _COMPLETE)) and os.path.exists(python):
        return python
    return None


def _publish(target: str, link: str) -> None:
    temporary = f"{link}.link-{secrets.token_hex(4)}"
    os.symlink(os.path.basename(target), temporary)
    os.replace(temporary, link)  # atomic: a reader sees no link or the complete environment


def _remove_leftovers(link: str) -> None:
    """Under the lock: remove what a failed or killed build of this key left (a dangling link, its dirs)."""
    if os.path.islink(link):
        os.unlink(link)  # not published by _published's rules: broken, so rebuilt
    cache, name = os.path.split(link)
    for entry in os.listdir(cache):
        if entry.startswith(name + "-") or entry.startswith(name + ".link-"):
            path = os.path.join(cache, entry)
            if os.path.islink(path) or not os.path.isdir(path):
                os.unlink(path)
            else:
                shutil.rmtree(path, ignore_errors=True)


def _lock(fd: int, deadline: float | None, timeout, link: str) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if deadline is not None and time.monotonic() > deadline:
            raise RuntimeEnvSetupError(
                f"Timed out after {timeout} s (runtime_env config setup_timeout_seconds) waiting for another "
                f"process to finish building the same Python environment ({link}).")
        time.sleep(_LOCK_POLL)


def _ensure_private_dir(path: str) -> None:
    """Create the cache directory (0700, parents as needed) or check that it is this user's alone."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise RuntimeEnvSetupError(f"Cannot use {path} for Python environments: {exc}. Set {CACHE_ENV} to a "
                                   "directory of your own.") from exc
    if info.st_uid != os.getuid():
        raise RuntimeEnvSetupError(f"The Python environment cache {path} belongs to another user; set {CACHE_ENV} "
                                   "to a directory of your own.")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
