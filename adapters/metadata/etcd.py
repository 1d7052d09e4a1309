"""A MetadataStore on etcd v3 (the ``python3-etcd3`` client: the maintained fork of ``etcd3``).

Chosen by measurement on these machines (see SERVERS.md of the project):
``etcd3`` itself no longer imports with current protobuf, ``aetcd`` is an
asyncio API (this port is synchronous), ``etcd3gw`` goes through the JSON
gateway at about half the rate; ``python3-etcd3`` works unchanged and keeps
``etcd3``'s API (about 1,000 puts/s and 1,300 gets/s one at a time).

Keys live under a namespace (``anyray/`` by default). A key with a TTL is
attached to a lease of that many seconds (rounded up: etcd's leases count
whole seconds); putting it again attaches a fresh lease. Compare-and-set is
one etcd transaction. Watches use etcd's ordered watch streams; an expired
lease deletes its keys, which watchers see as a delete. Calls are retried
with exponential backoff while the server is unreachable, and a watch whose
stream broke is re-established the same way.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlparse

from anyray.ports.metadata_store import MetadataStore, Watch

log = logging.getLogger(__name__)

RETRY_SECONDS = 10.0  # how long calls keep retrying an unreachable server


class _Six:
    @staticmethod
    def itervalues(mapping):
        return iter(list(mapping.values()))


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdMetadataStore, prefix: str, callback):
        self._store, self.prefix, self.callback = store, prefix, callback
        self.watch_id = None
        self.client = None  # the client its stream belongs to
        self.lock = threading.Lock()
        self.broken = False  # its stream ended with an error
        self.cancelled = False

    def cancel(self) -> None:
        self._store._unwatch(self)


class EtcdMetadataStore(MetadataStore):
    """``EtcdMetadataStore("etcd://127.0.0.1:2379")`` (``etcd://user:password@host:port`` with auth;
    ``?ca=FILE&cert=FILE&key=FILE``: TLS, the server checked against the CA, this client's certificate shown)."""

    def __init__(self, url: str, namespace: str = "anyray"):
        import etcd3
        import etcd3.watch

        if not hasattr(etcd3.watch, "six"):
            # python3-etcd3 0.13 dropped six but still calls six.itervalues when a watch stream breaks:
            # without this its watcher thread dies of a NameError and no watch hears of the break.
            etcd3.watch.six = _Six
        self._etcd3 = etcd3
        parsed = urlparse(url)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 2379
        self._credentials = (parsed.username or None, parsed.password or None)
        query = parse_qs(parsed.query)
        self._tls = {arg: query[name][0] for name, arg in (("ca", "ca_cert"), ("cert", "cert_cert"),
                                                         ("key", "cert_key")) if name in query}
        if self._tls and len(self._tls) != 3:
            raise ValueError("An etcd URL with TLS names all three files: ?ca=FILE&cert=FILE&key=FILE.")
        self._client = self._connect()
        self._client_lock = threading.Lock()
        self._ns = namespace + "/"
        self._lock = threading.Lock()
        self._watches: list[_EtcdWatch] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"EtcdMetadataStore({self._host}:{self._port}, {self._ns!r})"

    def _connect(self):
        user, password = self._credentials
        if user is None:  # no credentials: the client connects lazily, its errors reach ``_call``
            return self._etcd3.client(host=self._host, port=self._port, timeout=5, **self._tls)
        import grpc

        try:  # with credentials the client authenticates at once: its gRPC error, said plainly
            return self._etcd3.client(host=self._host, port=self._port, user=user, password=password, timeout=5,
                                      **self._tls)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ConnectionError(f"The etcd metadata store at {self._host}:{self._port} is unreachable "
                                      f"({code.name}).") from None
            raise PermissionError(f"The etcd metadata store at {self._host}:{self._port} refused the credentials "
                                  f"in its URL ({getattr(code, 'name', type(exc).__name__)}); check the user "
                                  f"and password.") from None

    def _reconnect(self, broken) -> None:
        """A fresh client (the library shuns an endpoint for minutes after one failure), watches moved to it."""
        with self._client_lock:
            if self._client is not broken or self._closed:
                return
            self._client = self._connect()
            watches = list(self._watches)
        try:
            broken.close()
        except Exception:  # noqa: BLE001 - closing a broken channel
            pass
        for w in watches:
            if not w.cancelled:
                threading.Thread(target=self._rewatch, args=(w,), daemon=True, name="anyray-etcd-rewatch").start()

    def _call(self, fn, *args, **kwargs):
        """Call ``fn(client, ...)``, retrying while the server is unreachable, backing off; then
        ``ConnectionError``."""
        failed = (self._etcd3.exceptions.ConnectionFailedError, self._etcd3.exceptions.ConnectionTimeoutError,
                  ValueError)  # ValueError: the library's "Trying to use a failed node"
        deadline = time.monotonic() + RETRY_SECONDS
        delay = 0.05
        while True:
            client = self._client
            try:
                return fn(client, *args, **kwargs)
            except failed as exc:
                if isinstance(exc, ValueError) and "failed node" not in str(exc):
                    raise
                if time.monotonic() > deadline or self._closed:
                    raise ConnectionError(f"The etcd metadata store at {self._host}:{self._port} is unreachable: "
                                          f"{type(exc).__name__}") from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                self._reconnect(client)

    # -- the port -------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        value, _ = self._call(lambda c: c.get(self._ns + key))
        return value

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        def put(client):
            lease = None if ttl is None else client.lease(max(1, math.ceil(ttl)))
            client.put(self._ns + key, value, lease=lease)
        self._call(put)

    def delete(self, key: str) -> bool:
        return bool(self._call(lambda c: c.delete(self._ns + key)))

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        n = len(self._ns)
        items = self._call(lambda c: [(meta.key.decode()[n:], value) for value, meta in
                                      c.get_prefix(self._ns + prefix, sort_order="ascend", sort_target="key")])
        return iter(items)

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        full = self._ns + key

        def swap(client):
            tx = client.transactions
            compare = [tx.version(full) == 0] if expected is None else [tx.value(full) == expected]
            success = [tx.delete(full)] if value is None else [tx.put(full, value)]
            return client.transaction(compare=compare, success=success, failure=[])[0]
        return bool(self._call(swap))

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        w = _EtcdWatch(self, prefix, callback)
        with self._lock:
            self._watches.append(w)
        self._start_watch(w)
        return w

    def _start_watch(self, w: _EtcdWatch) -> None:
        n = len(self._ns)
        events = self._etcd3.events

        def on_response(response):
            if isinstance(response, Exception):  # the stream broke (the server went away): watch again
                w.broken = True
                if not w.cancelled and not self._closed:
                    threading.Thread(target=self._rewatch, args=(w,), daemon=True,
                                     name="anyray-etcd-rewatch").start()
                return
            for event in response.events:
                if w.cancelled:
                    return
                name = event.key.decode()[n:]
                value = None if isinstance(event, events.DeleteEvent) else event.value
                try:
                    w.callback(name, value)
                except Exception:  # noqa: BLE001 - a failing callback must not stop the stream
                    log.exception("a metadata watch callback failed")

        def add(client):
            w.client = client
            return client.add_watch_prefix_callback(self._ns + w.prefix, on_response)
        w.watch_id = self._call(add)

    def _rewatch(self, w: _EtcdWatch) -> None:
        delay = 0.05
        while not w.cancelled and not self._closed:
            try:
                with w.lock:  # the broken stream and the reconnect may both ask for it
                    if w.broken or w.client is not self._client:
                        self._start_watch(w)  # from now on: what changed while away is not replayed
                        w.broken = False
                return
            except (ConnectionError, self._etcd3.exceptions.Etcd3Exception, ValueError):
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _unwatch(self, w: _EtcdWatch) -> None:
        with self._lock:
            if w.cancelled:
                return
            w.cancelled = True
            if w in self._watches:
                self._watches.remove(w)
        if w.watch_id is not None:
            try:
                w.client.cancel_watch(w.watch_id)
            except Exception:  # noqa: BLE001 - the stream is gone already
                pass

    def close(self) -> None:
        self._closed = True
        for w in list(self._watches):
            self._unwatch(w)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel
            pass
