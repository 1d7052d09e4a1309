"""A MetadataStore on Redis (redis-py with hiredis).

Keys live under a namespace (``anyray:`` by default) so one server can hold
several clusters. Pub/sub keeps nothing, so changes made while a watch was
resubscribing after the server went away are recovered by a re-read: each
watch remembers what it told its callback (``known``), and after every
resubscription the listener reads each watch's prefix again and delivers
the differences (a put for each key new or changed, a delete for each key
gone; after a restart of the server, a key it lost counts as gone only if
it is still absent a grace period later, as its owners write it again),
so every watcher ends up told the final state of every key. Every
write is one Lua script that changes the key and publishes the change (key
and new value) on the namespace's event channel in the same atomic step, so
watchers see the changes of a key in the order they happened, with the values they had. Expiries come from Redis's own
``expired`` keyspace events (the adapter turns them on). Commands are retried
with backoff while the server is unreachable, for up to
``RAY_gcs_rpc_server_reconnect_timeout_s`` (``patience.py``: a write whose
answer was lost is not applied twice in effect); past that bound a
``ConnectionError`` reaches the caller. The password, if any, comes
from the URL and is never logged or shown in reprs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from anyray.ports.metadata_store import MetadataStore, Watch

from .known import Known, Reach
from .patience import OPEN_SECONDS, Patience

log = logging.getLogger(__name__)

_PUT = """
if ARGV[2] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('PUBLISH', KEYS[2], '1' .. KEYS[1] .. '\\0' .. ARGV[1])
return 1
"""

_DELETE = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('PUBLISH', KEYS[2], '0' .. KEYS[1])
  return 1
end
return 0
"""

_CAS = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '0' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[3] == '0' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], '0' .. KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[4])
  redis.call('PUBLISH', KEYS[2], '1' .. KEYS[1] .. '\\0' .. ARGV[4])
end
return 1
"""

_PUT_UNLESS = """
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
if ARGV[2] == '' then redis.call('SET', KEYS[1], ARGV[1]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
redis.call('PUBLISH', KEYS[2], '1' .. KEYS[1] .. '\\0' .. ARGV[1])
return 1
"""

RESTART_GRACE = 10.0  # seconds a key a restarted server lost may take to be written again before it counts as gone
RETRIES = 3  # the client's own attempts at a command (under a second); ``Patience`` waits out longer outages
SOCKET_SECONDS = 5.0  # an answer longer in coming is a failed attempt (a hung server): calls stay within the bound


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _RedisWatch(Watch):
    def __init__(self, store: RedisMetadataStore, prefix: str, callback):
        self._store, self.prefix, self.callback = store, prefix, callback
        self.known = Known()

    def cancel(self) -> None:
        self._store._unwatch(self)


class RedisMetadataStore(MetadataStore):
    """``RedisMetadataStore("redis://:password@127.0.0.1:6379/0")``."""

    def __init__(self, url: str, namespace: str = "anyray"):
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.reach = reach = Reach()  # when this process found the server unreachable

        class _NoRetryOnAuth(Retry):
            """A refused password is not a lost connection: fail at once instead of backing off."""

            def call_with_retry(self, do, *args, **kwargs):
                def attempt():
                    reach.sent()
                    try:
                        done = do()
                    except redis.AuthenticationError as exc:
                        reach.answered()
                        raise PermissionError(
                            "The Redis metadata store refused the credentials in its URL "
                            f"({type(exc).__name__}); check the password.") from None
                    except (redis.ConnectionError, redis.TimeoutError):  # after its subclass above
                        reach.failed()
                        raise
                    except BaseException:
                        reach.answered()  # it answered, with an error
                        raise
                    reach.answered()
                    return done
                return super().call_with_retry(attempt, *args, **kwargs)

        self._redis_mod = redis
        # an unanswered command (TimeoutError) is not retried here: ``Patience`` does, within its bound
        retry = _NoRetryOnAuth(ExponentialBackoff(cap=2.0, base=0.05), RETRIES,
                               supported_errors=(redis.ConnectionError,))
        self._client = redis.Redis.from_url(
            url, retry=retry, retry_on_error=[redis.ConnectionError],
            socket_connect_timeout=5, socket_timeout=SOCKET_SECONDS, health_check_interval=10)
        self._ns = namespace + ":"
        self._channel = self._ns + "events"
        self._db = self._client.connection_pool.connection_kwargs.get("db", 0)
        self._put = self._client.register_script(_PUT)
        self._delete = self._client.register_script(_DELETE)
        self._cas = self._client.register_script(_CAS)
        self._put_unless = self._client.register_script(_PUT_UNLESS)
        self._lock = threading.Lock()
        self._watches: list[_RedisWatch] = []
        self._listener: threading.Thread | None = None
        self._subscribed = threading.Event()  # set while the listener is subscribed
        self._stop = threading.Event()
        self._closed = False
        self._run_id = None  # the server's run_id when the listener last subscribed: another one is a restart
        kwargs = self._client.connection_pool.connection_kwargs
        self.patience = Patience(f"The Redis metadata store at {kwargs.get('host')}:{kwargs.get('port')}", reach)
        self._call(self._expiry_events, self._client, bound=OPEN_SECONDS)

    def _expiry_events(self, client) -> None:
        """Expiries reach watchers as keyspace events: turn them on (again after a restart of the server;
        one that forbids CONFIG must have them set in its own configuration)."""
        try:
            client.config_set("notify-keyspace-events", "Ex")
        except self._redis_mod.ResponseError:
            pass

    def __repr__(self) -> str:
        kwargs = self._client.connection_pool.connection_kwargs
        return f"RedisMetadataStore({kwargs.get('host')}:{kwargs.get('port')}/{self._db}, {self._ns!r})"

    def _call(self, fn, *args, settle=None, bound=None, **kwargs):
        """``fn(*args, **kwargs)``, waiting out an outage of the server (``Patience``; ``settle``: see there)."""
        return self.patience.call(lambda: self._attempt(fn, *args, **kwargs), settle, bound)

    def _attempt(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError) as exc:
            self.reach.failed()
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from None

    def _holds(self, key: str, value: bytes | None) -> bool:
        """Whether ``key`` holds ``value`` (None: it is absent): did a write whose answer was lost happen?"""
        return self._attempt(self._client.get, self._ns + key) == value

    def hurry(self) -> None:
        """This process is stopping: calls stop waiting out an outage."""
        self.patience.hurry()

    # -- the port -------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._call(self._client.get, self._ns + key)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> None:
        ms = "" if ttl is None else str(max(int(ttl * 1000), 1))
        self._call(self._put, keys=[self._ns + key, self._channel], args=[value, ms])

    def delete(self, key: str) -> bool:
        # after a lost answer, a retry that found the key gone may follow the attempt that deleted it
        return bool(self._call(self._delete, keys=[self._ns + key, self._channel], settle=lambda done: True))

    def scan(self, prefix: str) -> Iterator[tuple[str, bytes]]:
        full = self._ns + prefix
        keys = sorted(set(self._call(lambda: list(self._client.scan_iter(match=_glob_escape(full) + "*",
                                                                          count=1000)))))
        values = self._call(self._client.mget, keys) if keys else []
        n = len(self._ns)
        return iter([(k.decode()[n:], v) for k, v in zip(keys, values) if v is not None])

    def compare_and_set(self, key: str, expected: bytes | None, value: bytes | None) -> bool:
        args = ["0" if expected is None else "1", b"" if expected is None else expected,
                "0" if value is None else "1", b"" if value is None else value]
        return bool(self._call(self._cas, keys=[self._ns + key, self._channel], args=args,
                               settle=lambda done: done or (expected != value and self._holds(key, value))))

    def put_unless(self, key: str, value: bytes, ttl: float | None, absent: list[str]) -> bool:
        """Set ``key`` (as ``put``) only if none of the keys ``absent`` exists, in one atomic step; whether it did."""
        ms = "" if ttl is None else str(max(int(ttl * 1000), 1))
        keys = [self._ns + key, self._channel, *(self._ns + k for k in absent)]
        return bool(self._call(self._put_unless, keys=keys, args=[value, ms],
                               settle=lambda done: done or self._holds(key, value)))

    def watch(self, prefix: str, callback: Callable[[str, bytes | None], None]) -> Watch:
        w = _RedisWatch(self, prefix, callback)
        with self._lock:
            self._watches.append(w)
            if self._listener is None:
                self._listener = threading.Thread(target=self._listen, name="anyray-redis-watch", daemon=True)
                self._listener.start()
        self._subscribed.wait(10)  # changes from now on reach the callback
        current = dict(self.scan(prefix))  # what it holds now: a re-read after a resubscription compares with it
        with w.known.lock:
            for name, value in current.items():
                w.known.told(name, value)
        return w

    def _unwatch(self, w: _RedisWatch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)

    def _listen(self) -> None:
        """Deliver events; when the server goes away, resubscribe at once and then with backoff, and deliver
        what changed while no subscription stood (``_catch_up``: pub/sub keeps nothing)."""
        expired = f"__keyevent@{self._db}__:expired"
        pool = self._client.connection_pool  # its connection class too: TLS for a rediss:// URL
        listener = self._redis_mod.Redis(connection_pool=self._redis_mod.ConnectionPool(
            connection_class=pool.connection_class, **{**pool.connection_kwargs, "retry": None}))  # retried here
        delay = 0.0
        again = False  # a resubscription: what changed while none stood is recovered by a re-read
        while not self._stop.is_set():
            pubsub = listener.pubsub(ignore_subscribe_messages=True)
            try:
                self._expiry_events(listener)
                pubsub.subscribe(self._channel, expired)
                try:
                    run_id = listener.info("server").get("run_id")
                except self._redis_mod.ResponseError:  # INFO not allowed: every resubscription may be a restart
                    run_id = None
                if again:
                    self._catch_up(listener, restarted=run_id is None or run_id != self._run_id)
                self._run_id = run_id
                self.reach.reached()
                self._subscribed.set()
                again, delay = True, 0.0
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=0.5)
                    if msg is not None:
                        self._deliver(msg["channel"], msg["data"])
            except (self._redis_mod.ConnectionError, self._redis_mod.TimeoutError, OSError):
                self.reach.failed()
                self._subscribed.clear()
                self._stop.wait(delay)  # the server went away: resubscribe, backing off
                delay = min(max(delay * 2, 0.02), 0.5)
            finally:
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass
        listener.close()

    def _catch_up(self, listener, restarted: bool) -> None:
        """After a resubscription: read each watch's prefix again and deliver how it differs from what the
        watch was told (events published meanwhile were lost; those published since subscribing follow).
        When the server restarted (another ``run_id``) it may have come back empty: a key it lost is told as
        deleted only if it is still absent ``RESTART_GRACE`` seconds later, so that what its owners keep
        writing (the nodes' records, on their next heartbeat) is not taken for gone meanwhile."""
        n = len(self._ns)
        with self._lock:
            watches = list(self._watches)
        for w in watches:
            full = self._ns + w.prefix
            keys = sorted(set(listener.scan_iter(match=_glob_escape(full) + "*", count=1000)))
            values = listener.mget(keys) if keys else []
            current = {k.decode()[n:]: v for k, v in zip(keys, values) if v is not None}
            with w.known.lock:
                differences = w.known.differences(current)
                gone = [name for name, value in differences if value is None]
                for name, value in differences:
                    if value is not None or not restarted:
                        self._tell(w, name, value)
            if restarted and gone:
                timer = threading.Timer(RESTART_GRACE, self._still_gone, args=(w, gone))
                timer.daemon = True
                timer.start()

    def _still_gone(self, w: _RedisWatch, names: list[str]) -> None:
        """Tell ``w`` of the keys a restarted server lost that nobody wrote again since."""
        if self._closed or w not in self._watches:
            return
        try:
            values = self._call(self._client.mget, [self._ns + name for name in names])
        except ConnectionError:
            return  # gone again: the next resubscription reads the prefix anew
        with w.known.lock:
            for name, value in zip(names, values):
                if value is None and w.known.has(name):
                    self._tell(w, name, None)

    @staticmethod
    def _tell(w: _RedisWatch, name: str, value: bytes | None) -> None:
        w.known.told(name, value)
        try:
            w.callback(name, value)
        except Exception:  # noqa: BLE001 - a failing callback must not stop the others
            log.exception("a metadata watch callback failed")

    def _deliver(self, channel: bytes, data: bytes) -> None:
        n = len(self._ns)
        if channel == self._channel.encode():
            if data[:1] == b"1":
                key, _, value = data[1:].partition(b"\0")
            else:
                key, value = data[1:], None
        else:
            key, value = data, None  # an expiry
            if not key.startswith(self._ns.encode()):
                return
        name = key.decode()[n:]
        with self._lock:
            watches = [w for w in self._watches if name.startswith(w.prefix)]
        for w in watches:
            with w.known.lock:
                self._tell(w, name, value)

    def close(self) -> None:
        self._closed = True
        self.patience.hurry()
        self._stop.set()
        with self._lock:
            self._watches.clear()
        if self._listener is not None:
            self._listener.join(5)
        self._client.close()
