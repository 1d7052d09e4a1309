"""The workloads' ``ray_like`` module written on plain ``dask.distributed`` futures, without anyray.

It runs the same work as the dask backend on the same kind of cluster (the
scheduler in the driver, one ``dask worker`` process with ``num_cpus``
threads, started by the plugin's launcher), the way a Dask user would write
it: ``client.submit`` for tasks, futures as arguments, ``scatter`` for
``put``, Dask actors called directly. What the dask backend adds on top of
this is anyray's own overhead.
"""

from __future__ import annotations

import distributed
from distributed import Future

_client = None
_cluster = None


def init(num_cpus=1, **_):
    from anyray_dask.cluster import PrivateCluster

    global _client, _cluster
    _cluster = PrivateCluster([num_cpus], [{}])
    address = _cluster.start()
    _client = distributed.Client(address, security=_cluster.security)
    _cluster.wait_for_workers(_client)


def shutdown():
    global _client, _cluster
    _client.close()
    _cluster.stop()
    _client = _cluster = None


def _here():
    return _client if _client is not None else distributed.get_client()


def _in_task() -> bool:
    from distributed.worker import thread_state

    return getattr(thread_state, "key", None) is not None


class _Function:
    def __init__(self, fn):
        self._fn = fn

    def remote(self, *args):
        return _here().submit(self._fn, *args, pure=False)


class _Method:
    def __init__(self, method):
        self._method = method

    def remote(self, *args):
        return self._method(*args)


class _Actor:
    def __init__(self, future):
        self._future = future
        self._proxy = None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._proxy is None:
            self._proxy = self._future.result()
        return _Method(getattr(self._proxy, name))


class _ActorClass:
    def __init__(self, cls):
        self._cls = cls

    def remote(self, *args):
        return _Actor(_here().submit(self._cls, *args, actor=True, pure=False))


def remote(obj):
    return _ActorClass(obj) if isinstance(obj, type) else _Function(obj)


def _gather(futures):
    plain = [f for f in futures if isinstance(f, Future)]
    values = dict(zip([f.key for f in plain], _here().gather(plain))) if plain else {}
    return [values[f.key] if isinstance(f, Future) else f.result() for f in futures]


def get(refs):
    single = not isinstance(refs, list)
    items = [refs] if single else refs
    if _in_task():  # as worker_client does: leave the thread pool while waiting
        distributed.secede()
        try:
            out = _gather(items)
        finally:
            distributed.rejoin()
    else:
        out = _gather(items)
    return out[0] if single else out


def put(value):
    return _here().scatter(value, hash=False)


def wait(refs, num_returns=1):
    pending = list(refs)
    ready = [f for f in pending if f.done()]
    while len(ready) < num_returns:
        distributed.wait([f for f in pending if not f.done()], return_when="FIRST_COMPLETED")
        ready = [f for f in pending if f.done()]
    return ready, [f for f in pending if not f.done()]


def kill(actor):
    _here().cancel([actor._future], force=True)
