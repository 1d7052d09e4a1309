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
with backoff while the server is unreachable, for up to
``RAY_gcs_rpc_server_reconnect_timeout_s`` (``patience.py``: a write whose
answer was lost is not applied twice in effect), and a watch whose
stream broke is re-established the same way, from the revision after the
last one it delivered, so nothing that changed meanwhile is missed; when
that revision was compacted away, the prefix is read again and the
differences from what the watch had delivered are delivered instead.

An URL may name several members of one etcd cluster
(``etcd://h1:2379,h2:2379,h3:2379``): the store talks to one at a time and
moves to the next when one is unreachable, watches included.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, unquote

from anyray.ports.metadata_store import MetadataStore, Watch

from .known import Known, Reach
from .patience import Patience

log = logging.getLogger(__name__)

class _Six:
    @staticmethod
    def itervalues(mapping):
        return iter(list(mapping.values()))


def parse_url(url: str) -> tuple[list[tuple[str, int]], str | None, str | None]:
    """``etcd://[user:password@]host:port[,host:port...]`` -> (endpoints, user, password); ValueError if bad."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "etcd":
        raise ValueError("An etcd URL is etcd://HOST:PORT (several members: etcd://H1:P1,H2:P2,H3:P3).")
    netloc = rest.split("?", 1)[0].split("/", 1)[0]
    credentials, at, hosts = netloc.rpartition("@")
    user = password = None
    if at:
        name, _, secret = credentials.partition(":")
        user, password = unquote(name) or None, unquote(secret) or None
    endpoints = []
    for part in hosts.split(","):
        match = re.fullmatch(r"\[?([^\[\]]*?)\]?(?::(\d{1,5}))?", part.strip())
        if match is None or not match.group(1) or not 0 < int(match.group(2) or 2379) < 65536:
            raise ValueError(f"An etcd URL is etcd://HOST:PORT (several members: etcd://H1:P1,H2:P2,H3:P3); "
                             f"{part.strip()!r} is not HOST:PORT.")
        endpoints.append((match.group(1), int(match.group(2) or 2379)))
    return endpoints, user, password


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdMetadataStore, prefix: str, callback):
        self._store, self.prefix, self.callback = store, prefix, callback
        self.watch_id = None
        self.client = None  # the client its stream belongs to
        self.lock = threading.Lock()
        self.broken = False  # its stream ended with an error
        self.cancelled = False
        self.revision = 0  # the last revision delivered: a new stream starts at the next one
        self.stream = 0  # which stream is current: events of an older one are ignored
        self.known = Known()
        self.compacted = False  # the revision to resume from is gone: the next stream starts with a re-read

    def cancel(self) -> None:
        self._store._unwatch(self)


class EtcdMetadataStore(MetadataStore):
    """``EtcdMetadataStore("etcd://127.0.0.1:2379")`` (``etcd://user:password@host:port`` with auth;
    ``etcd://h1:p1,h2:p2,h3:p3`` for the members of one etcd cluster; ``?ca=FILE&cert=FILE&key=FILE``: TLS,
    the server checked against the CA, this client's certificate shown)."""

    def __init__(self, url: str, namespace: str = "anyray"):
        import etcd3
        import etcd3.watch

        if not hasattr(etcd3.watch, "six"):
            # python3-etcd3 0.13 dropped six but still calls six.itervalues when a watch stream breaks:
            # without this its watcher thread dies of a NameError and no watch hears of the break.
            etcd3.watch.six = _Six
        self._etcd3 = etcd3
        url, _, query = url.partition("?")
        tls = parse_qs(query)
        self._tls = {arg: tls[name][0] for name, arg in (("ca", "ca_cert"), ("cert", "cert_cert"),
                                                        ("key", "cert_key")) if name in tls}
        if self._tls and len(self._tls) != 3:
            raise ValueError("An etcd URL with TLS names all three files: ?ca=FILE&cert=FILE&key=FILE.")
        self._endpoints, user, password = parse_url(url)
        self._at = 0  # the member talked to now
        self._host, self._port = self._endpoints[0]
        self._credentials = (user, password)
        self._client = self._connect_any()
        self._client_lock = threading.Lock()
        self._ns = namespace + "/"
        self._lock = threading.Lock()
        self._watches: list[_EtcdWatch] = []
        self._closed = False
        self.reach = Reach()  # when this process found the server unreachable
        self.patience = Patience(f"The etcd metadata store at {self._members()}", self.reach)

    def __repr__(self) -> str:
        return f"EtcdMetadataStore({self._members()}, {self._ns!r})"

    def _members(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self._endpoints)

    def _next_member(self) -> None:
        self._at = (self._at + 1) % len(self._endpoints)
        self._host, self._port = self._endpoints[self._at]

    def _connect_any(self):
        """A client of the first member that answers (with credentials: that authenticates them)."""
        for tried in range(len(self._endpoints)):
            try:
                return self._connect()
            except ConnectionError:
                if tried == len(self._endpoints) - 1:
                    raise
                self._next_member()

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
            self._next_member()  # another member, if the URL names several
            try:
                self._client = self._connect()
            except ConnectionError:  # with credentials: that member is down too; the next try moves on
                return
            watches = list(self._watches)
        try:
            broken.close()
        except Exception:  # noqa: BLE001 - closing a broken channel
            pass
        for w in watches:
            if not w.cancelled:
                threading.Thread(target=self._rewatch, args=(w,), daemon=True, name="anyray-etcd-rewatch").start()

    def _call(self, fn, settle=None):
        """``fn(client)``, waiting out an outage of the server (``Patience``; ``settle``: see there); each failed
        attempt moves to a fresh client (of the next member, if the URL names several)."""
        return self.patience.call(lambda: self._attempt(fn), settle)

    def _attempt(self, fn):
        failed = (self._etcd3.exceptions.ConnectionFailedError, self._etcd3.exceptions.ConnectionTimeoutError,
                  ValueError)  # ValueError: the library's "Trying to use a failed node"
        client = self._client
        self.reach.sent()
        try:
            done = fn(client)
        except BaseException as exc:
            if not isinstance(exc, failed):
                self.reach.answered()
                raise
            if isinstance(exc, ValueError) and "failed node" not in str(exc):
                self.reach.answered()
                raise
            self.reach.failed()
            self._reconnect(client)
            raise ConnectionError(type(exc).__name__) from None
        self.reach.answered()
        return done

    def _holds(self, key: str, value: bytes | None) -> bool:
        """Whether ``key`` holds ``value`` (None: it is absent): did a write whose answer was lost happen?"""
        return self._attempt(lambda c: c.get(self._ns + key))[0] == value

    def hurry(self) -> None:
        """This process is stopping: calls stop waiting out an outage."""
        self.patience.hurry()

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
        # after a lost answer, a retry that found the key gone may follow the attempt that deleted it
        return bool(self._call(lambda c: c.delete(self._ns + key), settle=lambda done: True))

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
        return bool(self._call(swap, settle=lambda done: done or (expected != value and self._holds(key, value))))

    def put_unless(self, key: str, value: bytes, ttl: float | None, absent: list[str]) -> bool:
        """Set ``key`` (as ``put``) only if none of the keys ``absent`` exists: one transaction; whether it did."""
        def put(client):
            lease = None if ttl is None else client.lease(max(1, math.ceil(ttl)))
            tx = client.transactions
            compare = [tx.version(self._ns + k) == 0 for k in absent]
            success = [tx.put(self._ns + key, value, lease=lease)]
            done = client.transaction(compare=compare, success=success, failure=[])[0]
            if not done and lease is not None:
                lease.revoke()
            return done
        return bool(self._call(put, settle=lambda done: done or self._holds(key, value)))

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        w = _EtcdWatch(self, prefix, callback)
        self._read_prefix(w, deliver=False)  # what it holds now, and the revision the stream starts after
        with self._lock:
            self._watches.append(w)
        self._start_watch(w)
        return w

    def _read_prefix(self, w: _EtcdWatch, deliver: bool) -> None:
        """Read ``w``'s prefix and the revision it was read at; with ``deliver``, tell the callback how it
        differs from what it was told (a stream that could not resume: its revision was compacted)."""
        n = len(self._ns)
        response = self._call(lambda c: c.get_prefix_response(self._ns + w.prefix))
        current = {kv.key.decode()[n:]: kv.value for kv in response.kvs}
        with w.known.lock:
            events = w.known.differences(current) if deliver else list(current.items())
            w.revision = response.header.revision
            for name, value in events:
                w.known.told(name, value)
                if deliver:
                    self._tell(w, name, value)

    @staticmethod
    def _tell(w: _EtcdWatch, name: str, value: bytes | None) -> None:
        try:
            w.callback(name, value)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the stream
            log.exception("a metadata watch callback failed")

    def _start_watch(self, w: _EtcdWatch) -> None:
        n = len(self._ns)
        events = self._etcd3.events
        w.stream += 1
        stream = w.stream

        def on_response(response):
            if w.stream != stream:
                return  # a stream since replaced
            if isinstance(response, Exception):  # the stream broke (the server went away): watch again
                w.broken = True
                # its start revision was compacted away (the server cancels the stream): re-read instead
                w.compacted = isinstance(response, self._etcd3.exceptions.RevisionCompactedError)
                if not w.cancelled and not self._closed:
                    threading.Thread(target=self._rewatch, args=(w,), daemon=True,
                                     name="anyray-etcd-rewatch").start()
                return
            with w.known.lock:
                for event in response.events:
                    if w.cancelled or w.stream != stream:
                        return
                    if event.mod_revision <= w.revision:
                        continue  # delivered already
                    name = event.key.decode()[n:]
                    value = None if isinstance(event, events.DeleteEvent) else event.value
                    w.known.told(name, value)
                    self._tell(w, name, value)
                if response.events:
                    w.revision = max(w.revision, response.events[-1].mod_revision)

        def add(client):
            w.client = client
            return client.add_watch_prefix_callback(self._ns + w.prefix, on_response, start_revision=w.revision + 1)

        if w.compacted:  # what changed meanwhile is gone from the history: re-read, deliver the differences
            self._read_prefix(w, deliver=True)
            w.compacted = False
        try:
            w.watch_id = self._call(add)
        except self._etcd3.exceptions.RevisionCompactedError:
            self._read_prefix(w, deliver=True)
            w.watch_id = self._call(add)

    def _rewatch(self, w: _EtcdWatch) -> None:
        delay = 0.05
        while not w.cancelled and not self._closed:
            client = w.client
            try:
                with w.lock:  # the broken stream and the reconnect may both ask for it
                    if w.broken or w.client is not self._client:
                        self._start_watch(w)  # from the revision after the last one delivered
                        w.broken = False
                return
            except (ConnectionError, self._etcd3.exceptions.Etcd3Exception, ValueError):
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                self._reconnect(client)  # that member may be gone: the next one, if there are several

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
        self.patience.hurry()
        for w in list(self._watches):
            self._unwatch(w)
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken channel
            pass
