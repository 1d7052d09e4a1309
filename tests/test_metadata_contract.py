"""The MetadataStore contract (``anyray.backend_kit.testing``) on the built-in adapters.

``MetadataStoreContract`` holds the tests; an adapter's test class mixes it
in and provides a ``store`` fixture (the fsspec pattern). The Redis and etcd
adapters run against real servers (``redis-server``, ``etcd``) that the
fixtures start on free loopback ports and stop by pid afterwards.
"""

import time

import pytest
from servers import EtcdServer, RedisServer

from anyray.adapters.metadata import MemoryMetadataStore
from anyray.adapters.metadata.etcd import EtcdMetadataStore
from anyray.adapters.metadata.redis import RedisMetadataStore
from anyray.backend_kit.testing import WAIT, Events, MetadataStoreContract


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
