"""The MetadataStore port on the Dask scheduler: a dict kept in the scheduler process.

Each operation is one function run on the scheduler (``run_on_scheduler``),
which runs it on its event loop, one at a time: that makes every operation,
``compare_and_set`` included, atomic. A key with a ``ttl`` stores its
deadline (wall-clock seconds) beside the value and reads as absent once it
has passed. ``watch`` polls its prefix every ``POLL`` seconds on a thread of
its own. The state lives as long as the scheduler; the functions run there
come from this module, so ``anyray-dask`` must be installed where the
scheduler runs, as on the workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from anyray.backend_kit import MetadataStore, PollingWatch, Watch

POLL = 0.1
_ATTR = "_anyray_metadata"


def _table(dask_scheduler) -> dict:
    table = getattr(dask_scheduler, _ATTR, None)
    if table is None:
        table = {}
        setattr(dask_scheduler, _ATTR, table)
    return table


def _live(table: dict, key: str):
    record = table.get(key)
    if record is None:
        return None
    value, deadline = record
    if deadline is not None and deadline <= time.time():
        del table[key]
        return None
    return value


def _get(key, dask_scheduler=None):
    return _live(_table(dask_scheduler), key)


def _put(key, value, ttl, dask_scheduler=None):
    _table(dask_scheduler)[key] = (value, None if ttl is None else time.time() + ttl)


def _delete(key, dask_scheduler=None):
    table = _table(dask_scheduler)
    existed = _live(table, key) is not None
    table.pop(key, None)
    return existed


def _delete_prefix(prefix, dask_scheduler=None):
    table = _table(dask_scheduler)
    for key in [k for k in table if k.startswith(prefix)]:
        del table[key]


def _scan(prefix, dask_scheduler=None):
    table = _table(dask_scheduler)
    out = []
    for key in sorted(k for k in table if k.startswith(prefix)):
        value = _live(table, key)
        if value is not None:
            out.append((key, value))
    return out


def _cas(key, expected, value, dask_scheduler=None):
    table = _table(dask_scheduler)
    if _live(table, key) != expected:
        return False
    if value is None:
        table.pop(key, None)
    else:
        table[key] = (value, None)
    return True


class DaskMetadataStore(MetadataStore):
    def __init__(self, client):
        self._client = client

    def _run(self, fn, *args):
        try:
            return self._client.run_on_scheduler(fn, *args)
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(f"The Dask scheduler did not answer ({exc}); is the cluster up?") from exc

    def get(self, key: str) -> bytes | None:
        return self._run(_get, key)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self._run(_put, key, bytes(value), ttl)

    def delete(self, key: str) -> bool:
        return self._run(_delete, key)

    def delete_prefix(self, prefix: str) -> None:
        self._run(_delete_prefix, prefix)

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        return iter(self._run(_scan, prefix))

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        return self._run(_cas, key, expected, value)

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        return PollingWatch(self.scan, prefix, callback, POLL, "anyray-dask-watch")
