"""``import ray`` as anyray: the module aliasing behind ``anyray run``.

After :func:`install_ray_alias`, ``import ray`` gives the ``anyray`` module
and ``import ray.X`` gives ``anyray.X``: the same module objects, so
``ray.exceptions.RayTaskError is anyray.exceptions.TaskError``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys

ALIAS = "ray"
TARGET = "anyray"


class _AliasLoader(importlib.abc.Loader):
    """Returns the already-imported anyray module instead of making a new one."""

    def __init__(self, real_spec):
        self._real_spec = real_spec

    def create_module(self, spec):
        return importlib.import_module(self._real_spec.name)

    def exec_module(self, module):
        module.__spec__ = self._real_spec  # the import system set it to the alias's spec


class RayAliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``ray`` and ``ray.*`` to ``anyray`` and ``anyray.*``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        real_name = TARGET + fullname[len(ALIAS):]
        try:
            real_spec = importlib.util.find_spec(real_name)
        except ModuleNotFoundError:
            real_spec = None
        if real_spec is None:
            return None  # anyray has no such module: let the import fail as usual
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(real_spec),
                                              is_package=real_spec.submodule_search_locations is not None)


def install_ray_alias() -> None:
    """Make ``import ray`` and ``import ray.X`` resolve to anyray in this process."""
    for name, module in list(sys.modules.items()):
        if name == ALIAS or name.startswith(ALIAS + "."):
            if not getattr(module, "__name__", "").startswith(TARGET):
                raise RuntimeError(f"The real {name!r} is already imported; the ray alias must be set up first.")
    if not any(isinstance(f, RayAliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, RayAliasFinder())
    for name, module in list(sys.modules.items()):
        if name == TARGET or name.startswith(TARGET + "."):
            sys.modules.setdefault(ALIAS + name[len(TARGET):], module)
