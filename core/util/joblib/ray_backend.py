"""The joblib backend ``"ray"``: joblib's multiprocessing backend with its pool replaced by
``anyray.util.multiprocessing.Pool`` (a pool of actors), as Ray's is.

joblib's pool protocol (``apply_async`` with callbacks, ``close``/``terminate``) is what ``Pool`` offers, so
the backend only decides how many actors to start and with which options.
"""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import FallbackToBackend, MultiprocessingBackend, SequentialBackend

from ... import api
from ..multiprocessing import Pool


def _cluster_cpus() -> int:
    if not api.is_initialized():
        api.init()
    return int(api.cluster_resources().get("CPU", 0))


class RayBackend(MultiprocessingBackend):
    """``n_jobs=-1`` means every CPU of the cluster (a runtime is started if none is up); ``ray_remote_args``
    (given to ``parallel_backend`` or to ``Parallel``) are the options of the pool's actors."""

    supports_timeout = True

    def __init__(self, nesting_level: int | None = None, inner_max_num_threads: int | None = None,
                 ray_remote_args: dict[str, Any] | None = None, **kwargs):
        self.ray_remote_args = ray_remote_args
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)

    def effective_n_jobs(self, n_jobs):
        if n_jobs == -1:
            return _cluster_cpus()
        return super().effective_n_jobs(n_jobs)

    def configure(self, n_jobs: int = 1, parallel=None, prefer=None, require=None,
                  ray_remote_args: dict[str, Any] | None = None, **pool_args):
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        remote_args = ray_remote_args if ray_remote_args is not None else self.ray_remote_args
        self._pool = Pool(processes=n_jobs, ray_remote_args=remote_args)
        self.parallel = parallel
        return n_jobs
