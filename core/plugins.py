"""Backend discovery: one path, the ``anyray.backends`` entry-point group, for built-in and
third-party backends alike.

An entry point's name is the backend's name and its value a module that
implements the ``anyray_backends`` hook. Only the entry point asked for is
imported, so a slow engine import is paid only by those who use it.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass

import pluggy

from . import hookspecs
from .exceptions import BackendNotFoundError
from .ports.backend import Backend

GROUP = "anyray.backends"
SHIPPED_PLUGINS = ("ray", "dask")


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str          # "package.module" or "package.module:attribute"
    distribution: str

    def load(self):
        module, _, attr = self.value.partition(":")
        obj = importlib.import_module(module.strip())
        for part in filter(None, attr.strip().split(".")):
            obj = getattr(obj, part)
        return obj


def _group_lines(text: str):
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line == f"[{GROUP}]"
        elif inside and "=" in line and not line.startswith(("#", ";")):
            name, _, value = line.partition("=")
            yield name.strip(), value.strip()


def _entry_points() -> dict[str, EntryPoint]:
    """The ``anyray.backends`` entry points of every distribution on ``sys.path``.

    Reads the same ``entry_points.txt`` files as ``importlib.metadata`` does,
    without its imports (they cost more than starting the local backend).
    """
    found: dict[str, EntryPoint] = {}
    for folder in sys.path:
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            continue
        for dist_dir in names:
            if not dist_dir.endswith((".dist-info", ".egg-info")):
                continue
            try:
                with open(os.path.join(folder or ".", dist_dir, "entry_points.txt"), encoding="utf-8") as fh:
                    text = fh.read()
            except OSError:
                continue
            dist = dist_dir.rsplit(".", 1)[0].split("-", 1)[0]
            for name, value in _group_lines(text):
                found.setdefault(name, EntryPoint(name, value, dist))  # first on sys.path wins
    return found


def _manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("anyray")
    pm.add_hookspecs(hookspecs)
    return pm


def _classes_of(ep: EntryPoint) -> list[type[Backend]]:
    pm = _manager()
    pm.register(ep.load(), name=ep.name)
    return [cls for found in pm.hook.anyray_backends() for cls in found]


def load_backend(name: str) -> type[Backend]:
    """The Backend class registered under ``name``; raise BackendNotFoundError listing the others."""
    eps = _entry_points()
    ep = eps.get(name)
    if ep is not None:
        for cls in _classes_of(ep):
            if cls.name == name:
                return cls
    installed = ", ".join(sorted(eps)) or "none"
    hint = (f" The {name!r} backend ships as a plugin: pip install ./plugins/anyray-{name} from anyray's source."
            if name in SHIPPED_PLUGINS else "")
    raise BackendNotFoundError(
        f"No anyray backend named {name!r}. Installed backends: {installed}.{hint} "
        f"A plugin provides a backend by registering it in the {GROUP!r} entry-point group.")


def add_commands(subparsers) -> None:
    """Let every installed backend plugin add its subcommands (the cluster backend's ``start``...)."""
    pm = _manager()
    for name, ep in sorted(_entry_points().items()):
        try:
            pm.register(ep.load(), name=name)
        except Exception:  # noqa: BLE001 - a broken plugin must not break the command line; `backends` says why
            continue
    pm.hook.anyray_commands(subparsers=subparsers)


@dataclass
class BackendListing:
    name: str
    distribution: str
    backend: type[Backend] | None
    error: str | None = None


def list_backends() -> list[BackendListing]:
    """Every installed backend; one that fails to load is listed with its error."""
    out = []
    for name, ep in sorted(_entry_points().items()):
        dist = ep.distribution
        try:
            match = [c for c in _classes_of(ep) if c.name == name]
            out.append(BackendListing(name, dist, match[0] if match else None,
                                      None if match else f"{ep.value} provides no backend named {name!r}"))
        except Exception as exc:  # a broken plugin must not hide the others
            out.append(BackendListing(name, dist, None, f"{type(exc).__name__}: {exc}"))
    return out
