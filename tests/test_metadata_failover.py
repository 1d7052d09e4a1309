"""Watches that were away, and an etcd cluster that loses a member, against real servers.

A watch's connection is cut (``TcpProxy``) while other clients change keys,
so the changes happen while no watch stream stands; once the connection is
back, the watcher must have been told the final state of every key, deletes
included: etcd resumes its stream from the revision after the last one it
delivered (or re-reads the prefix when that revision was compacted away),
Redis re-reads the prefix and delivers the differences.
"""

from __future__ import annotations

import threading
import time

import pytest
from servers import EtcdCluster, EtcdServer, RedisServer, TcpProxy

from anyray.adapters.metadata import open_metadata
from anyray.adapters.metadata.etcd import parse_url

WAIT = 30.0


class Told:
    """A watch callback: the state the watcher was told, and every event in order."""

    def __init__(self):
        self.state: dict[str, bytes] = {}
        self.events: list[tuple[str, bytes | None]] = []
        self._lock = threading.Lock()

    def __call__(self, key, value):
        with self._lock:
            self.events.append((key, value))
            if value is None:
                self.state.pop(key, None)
            else:
                self.state[key] = value

    def reaches(self, expected: dict) -> bool:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if self.state == expected:
                    return True
            time.sleep(0.05)
        return False


def change_while_cut(store_url_via_proxy: str, direct_url: str, proxy: TcpProxy, after_cut=None):
    """Watch ``w/`` through the proxy, cut it, change keys directly (puts, changes, deletes, an expiry), mend
    it; returns (what the watcher was told, the final state)."""
    watcher = open_metadata(store_url_via_proxy, namespace="replay")
    writer = open_metadata(direct_url, namespace="replay")
    try:
        for key in ("w/keep", "w/change", "w/gone", "w/lapse"):
            writer.put(key, b"1")
        writer.put("w/lapse", b"1", ttl=1)
        told = Told()
        told.state = dict(writer.scan("w/"))  # what it holds before the watch: the watch tells of changes
        watcher.watch("w/", told)
        writer.put("w/seen", b"1")
        assert told.reaches({**told.state, "w/seen": b"1"})
        proxy.cut()
        time.sleep(0.5)  # the watch's stream is gone now
        writer.put("w/change", b"2")
        writer.delete("w/gone")
        writer.put("w/new", b"1")
        writer.put("w/new", b"2")
        writer.put("other/x", b"1")  # outside the prefix: never told
        time.sleep(2.5)  # w/lapse's lease runs out while the watch is away
        if after_cut is not None:
            after_cut(writer)
        proxy.mend()
        final = dict(writer.scan("w/"))
        assert "w/lapse" not in final and "w/gone" not in final
        assert told.reaches(final), (told.state, final)
        assert all(not k.startswith("other/") for k, _ in told.events)
        writer.put("w/after", b"1")  # and the watch goes on
        assert told.reaches({**final, "w/after": b"1"})
        return told
    finally:
        watcher.close()
        writer.close()


def test_a_redis_watch_recovers_what_changed_while_its_connection_was_cut(tmp_path):
    server = RedisServer.start(str(tmp_path))
    proxy = TcpProxy(server.port)
    try:
        told = change_while_cut(server.url.replace(f":{server.port}/", f":{proxy.port}/"), server.url, proxy)
        assert ("w/gone", None) in told.events and ("w/lapse", None) in told.events
    finally:
        proxy.close()
        server.stop()


def test_a_redis_watch_tells_of_keys_a_restarted_empty_server_lost(tmp_path):
    server = RedisServer.start(str(tmp_path))
    store = open_metadata(server.url, namespace="restart")
    try:
        store.put("w/a", b"1")
        told = Told()
        store.watch("w/", told)
        store.put("w/b", b"1")
        assert told.reaches({"w/b": b"1"})
        server.stop()  # no persistence: it comes back empty, and nobody published the deletes
        server = RedisServer.start(str(tmp_path), port=server.port, password=server.password)
        store.put("w/c", b"1")
        assert told.reaches({"w/c": b"1"})
        assert ("w/b", None) in told.events
    finally:
        store.close()
        server.stop()


@pytest.fixture
def etcd_via_proxy(tmp_path):
    server = EtcdServer.start(str(tmp_path))
    proxy = TcpProxy(server.port)
    yield server, proxy
    proxy.close()
    server.stop()


def test_an_etcd_watch_resumes_from_the_revision_after_the_last_it_delivered(etcd_via_proxy):
    server, proxy = etcd_via_proxy
    told = change_while_cut(f"etcd://127.0.0.1:{proxy.port}", server.url, proxy)
    # replayed from the history: every change in order, the intermediate value included
    assert [e for e in told.events if e[0] == "w/new"] == [("w/new", b"1"), ("w/new", b"2")]
    assert ("w/gone", None) in told.events and ("w/lapse", None) in told.events


def test_an_etcd_watch_whose_revision_was_compacted_re_reads_its_prefix(etcd_via_proxy):
    server, proxy = etcd_via_proxy

    def compact(writer):  # the history the watch would resume from is gone
        revision = writer._call(lambda c: c.get_response("x")).header.revision
        writer._call(lambda c: c.compact(revision, physical=True))

    told = change_while_cut(f"etcd://127.0.0.1:{proxy.port}", server.url, proxy, after_cut=compact)
    assert ("w/new", b"2") in told.events and ("w/new", b"1") not in told.events  # the differences only
    assert ("w/gone", None) in told.events and ("w/lapse", None) in told.events


def test_etcd_urls_name_one_member_or_several():
    assert parse_url("etcd://127.0.0.1:2379") == ([("127.0.0.1", 2379)], None, None)
    assert parse_url("etcd://u:p%40ss@h1:1,h2:2,[::1]:3") == ([("h1", 1), ("h2", 2), ("::1", 3)], "u", "p@ss")
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_url("etcd://h1:1,,h3:3")
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_url("etcd://h1:99999")


def test_an_etcd_cluster_that_loses_a_member_serves_on_with_no_error_seen(tmp_path):
    cluster = EtcdCluster(str(tmp_path))
    store = open_metadata(cluster.url, namespace="members")
    other = open_metadata(cluster.url, namespace="members")
    try:
        told = Told()
        store.watch("k/", told)
        store.put("k/0", b"0")
        assert told.reaches({"k/0": b"0"})
        talked_to = store._at
        cluster.members[talked_to].proc.kill()  # the member this store talks to dies
        for i in range(1, 20):
            store.put(f"k/{i}", str(i).encode())
            assert store.get(f"k/{i}") == str(i).encode()
            assert store.compare_and_set(f"k/{i}", str(i).encode(), b"x")
        other.delete("k/0")
        expected = {f"k/{i}": b"x" for i in range(1, 20)}
        assert dict(store.scan("k/")) == expected
        assert told.reaches(expected)  # the watch moved to another member, missing nothing
        assert store._at != talked_to
    finally:
        store.close()
        other.close()
        cluster.stop()
