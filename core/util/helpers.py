"""``ray.util.as_completed`` and ``ray.util.map_unordered``: results of many tasks as they finish."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .. import api

DEFAULT_CHUNK_SIZE = 10
DEFAULT_BACKPRESSURE_SIZE = 100


def _check(chunk_size: int, wait_kwargs: dict) -> None:
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size!r}")
    if "num_returns" in wait_kwargs:
        raise ValueError("Use the `chunk_size` argument instead of `num_returns`.")


def _next_batch(refs: list, chunk_size: int, yield_obj_refs: bool, wait_kwargs: dict) -> tuple[list, list]:
    ready, rest = api.wait(refs, num_returns=min(chunk_size, len(refs)), **wait_kwargs)
    return (ready if yield_obj_refs else api.get(ready)), rest


def as_completed(refs: Sequence, *, chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                 **wait_kwargs) -> Iterator[Any]:
    """Yield the values of ``refs`` (or the refs, with ``yield_obj_refs=True``) batch by batch, each batch the
    first ``chunk_size`` that are ready (``wait(num_returns=chunk_size)``); ``wait_kwargs`` (``timeout``,
    ``fetch_local``) go to ``wait``. There is no order promised beyond that."""
    _check(chunk_size, wait_kwargs)
    refs = list(refs)
    while refs:
        values, refs = _next_batch(refs, chunk_size, yield_obj_refs, wait_kwargs)
        yield from values


def map_unordered(fn, items: Iterable, *, backpressure_size: int | None = DEFAULT_BACKPRESSURE_SIZE,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, yield_obj_refs: bool = False,
                  **wait_kwargs) -> Iterator[Any]:
    """``fn.remote(item)`` for each item, the results yielded as they finish; at most ``backpressure_size``
    tasks are in flight (``None``: no limit): past it, the next ``chunk_size`` results are taken first."""
    if backpressure_size is not None and backpressure_size <= 0:
        raise ValueError("backpressure_size must be positive.")
    _check(chunk_size, wait_kwargs)
    limit = float("inf") if backpressure_size is None else backpressure_size
    refs: list = []
    for item in items:
        refs.append(fn.remote(item))
        if len(refs) >= limit:
            values, refs = _next_batch(refs, chunk_size, yield_obj_refs, wait_kwargs)
            yield from values
    yield from as_completed(refs, chunk_size=chunk_size, yield_obj_refs=yield_obj_refs, **wait_kwargs)
