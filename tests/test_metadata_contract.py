"""The MetadataStore contract, written once for every adapter.

``MetadataStoreContract`` holds the tests; an adapter's test class mixes it
in and provides a ``store`` fixture (the fsspec pattern). The Redis and etcd
adapters run against real servers (``redis-server``, ``etcd``) that the
fixtures start on free loopback ports and stop by pid afterwards.
"""

import threading
import time

import pytest
from servers import EtcdServer, RedisServer

from anyray.adapters.metadata import MemoryMetadataStore
from anyray.adapters.metadata.etcd import EtcdMetadataStore
from anyray.adapters.metadata.redis import RedisMetadataStore

WAIT = 10.0  # seconds a watch event may take to arrive


class Events:
    """Collects watch callbacks and lets a test wait for a given one."""

    def __init__(self):
        self.seen: list[tuple[str, bytes | None]] = []
        self._cond = threading.Condition()

    def __call__(self, key, value):
        with self._cond:
            self.seen.append((key, value))
            self._cond.notify_all()

    def wait_for(self, event, timeout=WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: event in self.seen, timeout)


def survive_restart(store, server, restart):
    """Watch, write, restart the server (``restart()`` returns the new one), and check that calls are
    retried until it is back and that the watch resumes. Returns the new server and the events seen."""
    events = Events()
    store.watch("r/", events)
    store.put("r/1", b"before")
    assert events.wait_for(("r/1", b"before"))
    server.stop()
    server = restart()
    try:
        store.put("r/2", b"after")  # retried with backoff until the server is back
        assert store.get("r/2") == b"after"
        deadline = time.monotonic() + WAIT
        while ("r/3", b"again") not in events.seen and time.monotonic() < deadline:
            store.put("r/3", b"again")  # the watch comes back with backoff too
            time.sleep(0.2)
        assert ("r/3", b"again") in events.seen
    except BaseException:
        server.stop()  # the caller only knows the first server
        raise
    return server, events


class MetadataStoreContract:
    def test_put_get_delete(self, store):
        assert store.get("a/1") is None
        store.put("a/1", b"one")
        assert store.get("a/1") == b"one"
        store.put("a/1", b"uno")
        assert store.get("a/1") == b"uno"
        assert store.delete("a/1") is True
        assert store.get("a/1") is None
        assert store.delete("a/1") is False

    def test_scan_returns_the_prefix_sorted(self, store):
        for key in ("n/b", "n/a", "n/c", "m/a", "nn/x"):
            store.put(key, key.encode())
        assert list(store.scan("n/")) == [("n/a", b"n/a"), ("n/b", b"n/b"), ("n/c", b"n/c")]
        assert list(store.scan("zzz/")) == []

    def test_compare_and_set(self, store):
        assert store.compare_and_set("lock", None, b"me") is True      # only if absent
        assert store.compare_and_set("lock", None, b"you") is False
        assert store.compare_and_set("lock", b"you", b"x") is False    # wrong expectation
        assert store.compare_and_set("lock", b"me", b"me2") is True
        assert store.get("lock") == b"me2"
        assert store.compare_and_set("lock", b"me2", None) is True     # delete
        assert store.get("lock") is None

    def test_compare_and_set_lets_exactly_one_of_many_threads_win(self, store):
        wins = []
        barrier = threading.Barrier(8)

        def contend(i):
            barrier.wait()
            if store.compare_and_set("leader", None, str(i).encode()):
                wins.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert len(wins) == 1
        assert store.get("leader") == str(wins[0]).encode()

    def test_watch_sees_puts_and_deletes_under_its_prefix_in_order(self, store):
        events = Events()
        watch = store.watch("w/", events)
        store.put("w/1", b"a")
        store.put("other/1", b"ignored")
        store.put("w/1", b"b")
        store.delete("w/1")
        assert events.wait_for(("w/1", None))
        assert events.seen == [("w/1", b"a"), ("w/1", b"b"), ("w/1", None)]
        watch.cancel()
        store.put("w/2", b"after cancel")
        time.sleep(0.2)
        assert ("w/2", b"after cancel") not in events.seen
        watch.cancel()  # idempotent

    def test_a_key_with_a_ttl_expires_and_watchers_hear_of_it(self, store):
        events = Events()
        store.watch("lease/", events)
        store.put("lease/node1", b"alive", ttl=0.5)
        store.put("lease/node2", b"alive", ttl=60)
        assert store.get("lease/node1") == b"alive"
        assert events.wait_for(("lease/node1", None))
        assert store.get("lease/node1") is None
        assert store.get("lease/node2") == b"alive"

    def test_putting_a_key_again_renews_its_ttl(self, store):
        store.put("lease/n", b"1", ttl=1.0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # heartbeat faster than the ttl
            store.put("lease/n", b"1", ttl=1.0)
            time.sleep(0.1)
        assert store.get("lease/n") == b"1"


class TestMemoryMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def store(self):
        store = MemoryMetadataStore()
        yield store
        store.close()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer.start(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


class TestRedisMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def store(self, redis_server, request):
        store = RedisMetadataStore(redis_server.url, namespace=f"t-{request.node.name}")
        yield store
        store.close()

    def test_the_password_stays_out_of_reprs_and_a_wrong_one_is_refused(self, redis_server):
        store = RedisMetadataStore(redis_server.url)
        assert redis_server.password not in repr(store)
        store.close()
        wrong = redis_server.url.replace(redis_server.password, "not-the-password")
        started = time.monotonic()
        with pytest.raises(PermissionError, match="refused the credentials"):
            RedisMetadataStore(wrong).get("x")
        assert time.monotonic() - started < 5  # refused, not retried as if the server were down

    def test_a_restarted_server_is_reconnected_to_and_watches_resume(self, tmp_path):
        server = RedisServer.start(str(tmp_path))
        store = RedisMetadataStore(server.url)

        def restart():  # back without expiry events configured: the adapter turns them on again
            return RedisServer.start(str(tmp_path), port=server.port, password=server.password,
                                     keyspace_events=False)
        try:
            server, events = survive_restart(store, server, restart)
            store.put("r/ttl", b"x", ttl=0.3)
            assert events.wait_for(("r/ttl", None))  # expiries reach watchers after the restart too
        finally:
            store.close()
            server.stop()

@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    server = EtcdServer.start(str(tmp_path_factory.mktemp("etcd")))
    yield server
    server.stop()


class TestEtcdMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def store(self, etcd_server, request):
        store = EtcdMetadataStore(etcd_server.url, namespace=f"t-{request.node.name}")
        yield store
        store.close()

    def test_a_restarted_server_is_reconnected_to_and_watches_resume(self, tmp_path):
        server = EtcdServer.start(str(tmp_path))
        store = EtcdMetadataStore(server.url)
        try:
            server, _ = survive_restart(store, server, lambda: EtcdServer.start(str(tmp_path), port=server.port))
            assert store.get("r/1") == b"before"  # etcd keeps its data (same directory) across the restart
        finally:
            store.close()
            server.stop()
