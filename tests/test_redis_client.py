"""The Redis metadata store's own client (``adapters/metadata/resp.py``) against a real redis-server: what the
contract suite does not reach (URLs, databases, ACL users, replies of every shape, a server that is down)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from servers import RedisServer, free_port

from anyray.adapters.metadata import resp
from anyray.adapters.metadata.redis import RedisMetadataStore


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer.start(str(tmp_path_factory.mktemp("redis")))
    yield server
    server.stop()


def test_urls_are_read_with_their_user_password_and_database():
    assert resp.parse_url("redis://:p%40ss@10.0.0.1:6380/3") == {
        "host": "10.0.0.1", "port": 6380, "db": 3, "tls": False, "username": None, "password": "p@ss"}
    assert resp.parse_url("rediss://me:pw@host") == {
        "host": "host", "port": 6379, "db": 0, "tls": True, "username": "me", "password": "pw"}
    with pytest.raises(ValueError, match="numbers for the port and the database"):
        resp.parse_url("redis://:secret@host:6379/zero")
    with pytest.raises(ValueError, match="redis://"):
        resp.parse_url("http://host:6379")


def test_replies_of_every_shape(server):
    client = resp.Client(server.url)
    try:
        assert client.call("SET", "t:k", b"\x00\r\nbinary") == b"OK"
        assert client.call("GET", "t:k") == b"\x00\r\nbinary"
        assert client.call("GET", "t:none") is None
        assert client.call("INCR", "t:n") == 1
        assert client.call("MGET", "t:k", "t:none") == [b"\x00\r\nbinary", None]
        with pytest.raises(resp.ResponseError, match="WRONGTYPE|not an integer"):
            client.call("INCR", "t:k")
        assert client.script("return {KEYS[1], ARGV[1]}", ["a"], ["b"]) == [b"a", b"b"]
        client.call("SCRIPT", "FLUSH")  # the server forgets it: sent whole again
        assert client.script("return {KEYS[1], ARGV[1]}", ["c"], ["d"]) == [b"c", b"d"]
        big = b"x" * 300_000  # several reads of the socket
        client.call("SET", "t:big", big)
        assert client.call("GET", "t:big") == big
        assert sorted(client.scan("t:*")) == [b"t:big", b"t:k", b"t:n"]
    finally:
        client.call("DEL", "t:k", "t:n", "t:big")
        client.close()


def test_the_url_s_database_and_an_acl_user_are_used(server):
    admin = resp.Client(server.url)
    try:
        admin.call("ACL", "SETUSER", "anyray-test", "on", ">user-pw", "~*", "&*", "+@all")
        url = f"redis://anyray-test:user-pw@127.0.0.1:{server.port}/5"
        store = RedisMetadataStore(url, namespace="db5")
        try:
            store.put("k", b"v")
            assert store.get("k") == b"v"
        finally:
            store.close()
        assert admin.call("GET", "db5:k") is None  # not in database 0
        admin.call("SELECT", "5")  # (a connection of the pool: put back on database 0 below)
        assert admin.call("GET", "db5:k") == b"v"
        admin.call("DEL", "db5:k")
        admin.call("SELECT", "0")
        with pytest.raises(PermissionError, match="refused the credentials"):
            RedisMetadataStore(url.replace("user-pw", "wrong"))
    finally:
        admin.call("ACL", "DELUSER", "anyray-test")
        admin.close()


def test_a_server_that_is_down_is_a_connection_error_after_the_retries():
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="unreachable"):
        RedisMetadataStore(f"redis://:pw@127.0.0.1:{free_port()}/0")
    assert time.monotonic() - started > 1  # retried with backoff first, not given up at once


def test_the_store_does_not_load_redis_py():
    code = "import sys, anyray.adapters.metadata.redis; print('redis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
