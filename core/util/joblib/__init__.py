"""``ray.util.joblib``: run joblib's ``Parallel`` on the runtime.

``register_ray()`` registers the backend ``"ray"``; then ``with joblib.parallel_backend("ray"):`` runs
``Parallel(n_jobs=...)(delayed(f)(x) for x in ...)`` on a pool of actors. joblib is an optional dependency:
it is imported only by ``register_ray``.
"""

from __future__ import annotations


def register_ray() -> None:
    """Register the ``"ray"`` backend with joblib (``joblib.parallel_backend("ray")``)."""
    try:
        from joblib.parallel import register_parallel_backend
    except ImportError as exc:
        raise ImportError("The joblib backend needs joblib: pip install 'joblib>=1.3'") from exc
    from .ray_backend import RayBackend

    register_parallel_backend("ray", RayBackend)


__all__ = ["register_ray"]
