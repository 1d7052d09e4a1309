"""Ray's ``ray.experimental`` modules that anyray has: ``tqdm_ray`` (progress bars from tasks, drawn by the
driver)."""

from __future__ import annotations

_SUBMODULES = frozenset({"tqdm_ray"})


def __getattr__(name: str):
    """``ray.experimental.tqdm_ray`` after a bare ``import ray``, imported when first used."""
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["tqdm_ray"]
