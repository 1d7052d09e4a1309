"""``ray.types``: the names Ray programs use in type annotations."""

from __future__ import annotations

from .object_ref import ObjectRef

__all__ = ["ObjectRef"]
