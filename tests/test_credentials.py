"""No password in what anyray says: a real Redis with a password, reached with an unreachable URL, a wrong
password and the right one; the password must appear in no exception (its text, repr, arguments, traceback,
and those of every chained cause and context), no log record, no CLI output and no node's log."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import traceback

import pytest
from servers import RedisServer, free_port

import anyray
from anyray.adapters.cluster import files
from anyray.adapters.cluster.launch import kill_tree
from anyray.adapters.metadata.etcd import EtcdMetadataStore
from anyray.adapters.metadata.redis import RedisMetadataStore

SECRET = "Sekrit.pw.7"
WAIT = 120.0  # generous: a busy 2-core machine


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record):
        self.texts.append(self.format(record))


@pytest.fixture
def records():
    handler, root = Records(), logging.getLogger()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler.texts
    root.removeHandler(handler)
    root.setLevel(old)


@pytest.fixture
def cluster_dir(tmp_path, monkeypatch):
    path = tmp_path / "cluster"
    path.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS",
                                                            "ANYRAY_CLUSTER_TOKEN", "ANYRAY_REDIS_PASSWORD")}
    for name in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS", "ANYRAY_CLUSTER_TOKEN", "ANYRAY_REDIS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANYRAY_CLUSTER_DIR", str(path))
    env["ANYRAY_CLUSTER_DIR"] = str(path)
    yield str(path), env
    for record in files.local_nodes(str(path)):
        kill_tree(record["pid"])


def said(exc: BaseException) -> list[str]:
    """Everything an exception can show: text, repr, args and traceback of it and of every cause/context."""
    out, seen, todo = [], set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args), "".join(traceback.format_exception(type(e), e, e.__traceback__,
                                                                                  chain=False))]
        todo += [e.__cause__, e.__context__]
    return out


def failure(fn) -> BaseException:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - any error: its text is what is checked
        return exc
    finally:
        if anyray.is_initialized():
            anyray.shutdown()
    pytest.fail("expected an error")


def assert_secret_not_in(texts):
    leaked = [t for t in texts if SECRET in t]
    assert not leaked, leaked[:3]


def test_failed_connections_say_no_password(tmp_path, cluster_dir, records):
    server = RedisServer.start(str(tmp_path), password="the-right-one")
    dead = free_port()
    wrong = f"redis://:{SECRET}@127.0.0.1:{server.port}"
    try:
        errors = {
            "store, nothing listens": failure(lambda: RedisMetadataStore(f"redis://:{SECRET}@127.0.0.1:{dead}/0")
                                              .get("x")),
            "store, wrong password": failure(lambda: RedisMetadataStore(wrong + "/0").get("x")),
            "store, wrong user": failure(lambda: RedisMetadataStore(f"redis://bob:{SECRET}@127.0.0.1:"
                                                                    f"{server.port}/0").get("x")),
            "etcd store, nothing listens": failure(lambda: EtcdMetadataStore(f"etcd://u:{SECRET}@127.0.0.1:{dead}")),
            "init, nothing listens": failure(lambda: anyray.init(address=f"redis://:{SECRET}@127.0.0.1:{dead}")),
            "init, wrong password": failure(lambda: anyray.init(address=wrong)),
            "init, bad port": failure(lambda: anyray.init(address=f"redis://:{SECRET}@127.0.0.1:99999")),
            "init, credentials in a node's address": failure(
                lambda: anyray.init(address=f"ray://:{SECRET}@127.0.0.1:{dead}")),
            "init, credentials without a scheme": failure(
                lambda: anyray.init(address=f"admin:{SECRET}@127.0.0.1:{dead}")),
            "init, password and an empty store": failure(
                lambda: anyray.init(address=f"127.0.0.1:{server.port}", _redis_password=SECRET)),
            "init, local backend with an address": failure(
                lambda: anyray.init("local", address=f"redis://:{SECRET}@127.0.0.1:{dead}")),
        }
    finally:
        server.stop()
    assert isinstance(errors["store, wrong password"], PermissionError)
    assert isinstance(errors["etcd store, nothing listens"], ConnectionError)  # said plainly, not a gRPC dump
    assert "redis://***@127.0.0.1" in str(errors["init, wrong password"])  # where, without the password
    assert f"127.0.0.1:{dead}" in str(errors["init, credentials in a node's address"])
    assert isinstance(errors["init, credentials without a scheme"], ValueError)
    for what, exc in errors.items():
        assert_secret_not_in([what, *said(exc)])
    assert_secret_not_in(records)


def test_the_right_password_shows_nowhere(tmp_path, cluster_dir, records):
    directory, env = cluster_dir
    port = free_port()
    anyray_cli = [sys.executable, "-m", "anyray.cli"]
    started = subprocess.run([*anyray_cli, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                              "--metadata-port", str(port)], env=dict(env, ANYRAY_REDIS_PASSWORD=SECRET),
                             capture_output=True, text=True, timeout=WAIT)
    assert started.returncode == 0, started.stderr
    anyray.init(address=f"redis://:{SECRET}@127.0.0.1:{port}")
    try:
        assert anyray.get(anyray.remote(lambda x: x + 1).remote(1)) == 2
    finally:
        anyray.shutdown()
    outputs = [started.stdout, started.stderr]
    for command in (["status"], ["list", "nodes", "--format", "json"], ["stop"]):
        ran = subprocess.run([*anyray_cli, *command], env=env, capture_output=True, text=True, timeout=WAIT)
        assert ran.returncode == 0, ran.stderr
        outputs += [ran.stdout, ran.stderr]
    for folder, _dirs, names in os.walk(directory):
        for name in names:
            if name.endswith(".log"):
                with open(os.path.join(folder, name), errors="replace") as f:
                    outputs.append(f.read())
    assert "metadata: redis" in outputs[2]  # `anyray status` names the metadata server, without its password
    assert_secret_not_in(outputs)
    assert_secret_not_in(records)
