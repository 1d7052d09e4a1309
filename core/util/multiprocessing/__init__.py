"""``ray.util.multiprocessing``: the standard library's ``multiprocessing.Pool`` API on a pool of actors."""

from multiprocessing import TimeoutError

from .pool import AsyncResult, Pool

__all__ = ["AsyncResult", "Pool", "TimeoutError"]
