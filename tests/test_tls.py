"""TLS on a cluster, with real ``anyray start`` daemons on loopback: two TLS nodes run tasks, actors and a 50 MB
object across nodes; a client without TLS, or with another CA's certificate, gets a clear error; what crosses the
wire is encrypted (a proxy in the middle never sees a known payload, and does see it on a plain cluster); a TLS
head's private etcd and Redis refuse a client without a certificate of the cluster's CA; and no key or token shows
in a log or a command line."""

from __future__ import annotations

import glob
import os
import socket
import ssl
import struct
import subprocess
import sys
import textwrap
import threading

import psutil
import pytest
from test_cluster import WAIT, cli, driver, start_head, status_nodes, wait_until

from anyray.adapters.cluster import files, tls
from anyray.adapters.cluster.launch import kill_tree

PAYLOAD = "anyray-known-payload-7f3c1e"


def run_driver(env: dict, address: str, body: str) -> subprocess.CompletedProcess:
    code = f"import anyray\nanyray.init(address={address!r})\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WAIT)


def daemons_and_children(env: dict) -> list[psutil.Process]:
    procs = []
    for record in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]):
        root = psutil.Process(record["pid"])
        procs += [root, *root.children(recursive=True)]
    return procs


def secret_lines(path: str) -> list[str]:
    """The base64 lines of a PEM key: what would show if the key were written anywhere."""
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("-----")]


def test_a_tls_cluster_of_two_nodes_runs_tasks_actors_and_a_50_mb_object_across_nodes(cluster_env):
    env = cluster_env
    head = start_head(env, "--tls", "--num-cpus", "1")
    cli(env, "start", "--address", head["address"], "--num-cpus", "1", "--resources", '{"node2": 1}')
    other = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    wait_until(lambda: len(status_nodes(env)) == 2, "both nodes")
    directory = env["ANYRAY_CLUSTER_DIR"]
    assert oct(os.stat(os.path.join(directory, "tls", "ca.key")).st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.join(directory, "tls", "node.key")).st_mode & 0o777) == "0o600"
    for record in (head, other):  # every port of the node's protocol greets in TLS (/metrics is HTTP)
        for port in (p for what, p in record["ports"].items() if what != "metrics"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.settimeout(10)
                assert sock.recv(len(tls.BANNER), socket.MSG_WAITALL) == tls.BANNER
    result = driver(env, """
        import numpy as np, anyray as ray

        @ray.remote(resources={"node2": 1})
        def total(box):
            return float(ray.get(box[0]).sum()), ray.get_runtime_context().get_node_id()

        @ray.remote(resources={"node2": 1})
        def make(n):
            return np.full(n, 2.0)

        @ray.remote(resources={"node2": 1})
        class Counter:
            def __init__(self):
                self.n = 0
            def add(self, k):
                self.n += k
                return self.n, ray.get_runtime_context().get_node_id()

        big = np.ones(50 * 2**20 // 8)
        s, where = ray.get(total.remote([ray.put(big)]))
        assert s == big.size and where != ray.get_runtime_context().get_node_id(), (s, where)
        back = ray.get(make.remote(50 * 2**20 // 8))
        assert back.nbytes == 50 * 2**20 and back[-1] == 2.0
        c = Counter.remote()
        print("ACTOR", [ray.get(c.add.remote(k))[0] for k in (1, 2, 3)])
        print("DONE")
    """)
    assert result.returncode == 0, result.stderr
    assert "ACTOR [1, 3, 6]" in result.stdout and "DONE" in result.stdout
    # nothing secret in a log or a command line
    token = files.read_token(os.path.join(directory, "token")).decode()
    keys = secret_lines(os.path.join(directory, "tls", "node.key")) + secret_lines(
        os.path.join(directory, "tls", "ca.key"))
    for proc in daemons_and_children(env):
        try:
            argv = " ".join(proc.cmdline())
        except psutil.NoSuchProcess:
            continue
        assert token not in argv and not any(k in argv for k in keys), argv
    logs = glob.glob(os.path.join(directory, "logs", "*")) + glob.glob(os.path.join(directory, "*.log"))
    assert logs
    for path in logs:
        with open(path, errors="replace") as f:
            text = f.read()
        assert token not in text and not any(k in text for k in keys), path
    for record in (head, other):  # each node says it serves TLS
        with open(os.path.join(directory, "logs", f"node-{record['pid']}.log")) as f:
            assert "TLS)" in f.read()


def test_a_client_without_tls_or_with_another_ca_gets_a_clear_error(cluster_env, tmp_path):
    env = cluster_env
    head = start_head(env, "--tls")
    host, port = head["address"].rsplit(":", 1)
    # a client speaking plain multiprocessing frames is dropped after the banner
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(len(tls.BANNER), socket.MSG_WAITALL) == tls.BANNER
        sock.sendall(struct.pack("!i", 32) + b"x" * 32)
        try:
            rest = sock.recv(4096)
        except ConnectionResetError:
            rest = b""
        assert b"#WELCOME#" not in rest and b"#CHALLENGE#" not in rest
    token = files.read_token(os.path.join(env["ANYRAY_CLUSTER_DIR"], "token")).decode()
    elsewhere = dict(env, ANYRAY_CLUSTER_DIR=str(tmp_path / "elsewhere"), ANYRAY_CLUSTER_TOKEN=token)
    result = run_driver(elsewhere, head["address"], "print('CONNECTED')")
    assert result.returncode != 0 and "CONNECTED" not in result.stdout
    assert "requires TLS" in result.stderr and "ANYRAY_TLS_CA" in result.stderr, result.stderr
    # a certificate of another CA: refused, and said so
    other_ca = tls.cluster_files(str(tmp_path / "other-ca"))
    result = run_driver(dict(elsewhere, ANYRAY_TLS_CA=other_ca.ca, ANYRAY_TLS_CERT=other_ca.cert,
                             ANYRAY_TLS_KEY=other_ca.key), head["address"], "print('CONNECTED')")
    assert result.returncode != 0 and "CONNECTED" not in result.stdout
    assert "certificate" in result.stderr and "did not sign" in result.stderr, result.stderr
    # the same machine's driver (the head's files, found by its record) and a driver with Ray's spelling connect
    mine = os.path.join(env["ANYRAY_CLUSTER_DIR"], "tls")
    ray_env = dict(elsewhere, RAY_USE_TLS="1", RAY_TLS_CA_CERT=os.path.join(mine, "ca.crt"),
                   RAY_TLS_SERVER_CERT=os.path.join(mine, "node.crt"),
                   RAY_TLS_SERVER_KEY=os.path.join(mine, "node.key"))
    # another machine's files: `anyray tls-cert` on the head's machine issues them from the cluster's CA
    issued = tmp_path / "issued"
    cli(env, "tls-cert", "--out", str(issued), "--host", "10.0.0.2", "--name", "driver")
    assert oct(os.stat(issued / "driver.key").st_mode & 0o777) == "0o600"
    issued_env = dict(elsewhere, ANYRAY_TLS_CA=str(issued / "ca.crt"), ANYRAY_TLS_CERT=str(issued / "driver.crt"),
                      ANYRAY_TLS_KEY=str(issued / "driver.key"))
    for e in (env, ray_env, issued_env):
        result = run_driver(e, head["address"], """
            import anyray as ray
            print("GOT", ray.get(ray.remote(lambda: 41).remote()) + 1)
        """)
        assert "GOT 42" in result.stdout, result.stderr
    moved = tls.metadata_url("etcd://h:1?ca=%2Fa&cert=%2Fb&key=%2Fc", tls.TLSFiles("/x", "/y", "/z"))
    assert moved == "etcd://h:1?ca=%2Fx&cert=%2Fy&key=%2Fz"  # a joining node's own files, not the head's
    with pytest.raises(ValueError, match="RAY_TLS_SERVER_KEY"):
        tls.from_env({"RAY_USE_TLS": "1", "RAY_TLS_CA_CERT": "a", "RAY_TLS_SERVER_CERT": "b"})
    bad = cli(env, "start", "--address", head["address"], "--tls-ca", os.path.join(mine, "ca.crt"), check=False)
    assert bad.returncode != 0 and "--tls-ca, --tls-cert and --tls-key together" in bad.stderr


class Proxy(threading.Thread):
    """Forwards one listening port to ``target`` and keeps every byte it forwards, both ways."""

    def __init__(self, target: tuple[str, int]):
        super().__init__(daemon=True)
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.seen = bytearray()
        self.lock = threading.Lock()

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.seen += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


ECHO = f"""
    import anyray as ray

    @ray.remote
    def echo(text):
        return text + "!"

    # through the node (a task with a ref in its arguments): a plain task may go straight to a worker the
    # node lends this driver, over a Unix socket, not the wire
    print("ECHO", ray.get(echo.remote(ray.put({PAYLOAD!r}))))
"""


def through_proxy(env: dict, record: dict) -> bytes:
    host, port = record["address"].rsplit(":", 1)
    proxy = Proxy((host, int(port)))
    proxy.start()
    try:
        result = run_driver(env, f"127.0.0.1:{proxy.port}", ECHO)
        assert f"ECHO {PAYLOAD}!" in result.stdout, result.stderr
    finally:
        proxy.close()
    with proxy.lock:
        return bytes(proxy.seen)


def test_what_crosses_the_wire_is_encrypted(cluster_env, tmp_path):
    env = cluster_env
    # Ray's spelling, with files the user made: the head serves TLS with them
    ca_cert, ca_key = tls.make_ca(str(tmp_path / "ca"))
    made = tls.issue(ca_cert, ca_key, str(tmp_path / "ca"), "node")
    tls_env = dict(env, RAY_USE_TLS="1", RAY_TLS_CA_CERT=made.ca, RAY_TLS_SERVER_CERT=made.cert,
                   RAY_TLS_SERVER_KEY=made.key)
    head = start_head(tls_env)
    seen = through_proxy(tls_env, head)
    assert seen.startswith(tls.BANNER) and len(seen) > 1000
    assert PAYLOAD.encode() not in seen and b"#CHALLENGE#" not in seen
    for record in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]):
        kill_tree(record["pid"])
    # the same on a plain cluster: the proxy sees the payload (so the check above means something) ...
    plain = start_head(env)
    assert PAYLOAD.encode() in through_proxy(env, plain)
    # ... and a process told to use TLS refuses a node without it
    result = run_driver(tls_env, plain["address"], "print('CONNECTED')")
    assert result.returncode != 0 and "does not use TLS" in result.stderr, result.stderr


def metadata_port(env: dict, name: str) -> int:
    for proc in daemons_and_children(env):
        try:
            if name in proc.name() and name == "etcd":  # its client port (the peer port is TLS too)
                argv = proc.cmdline()
                return int(argv[argv.index("--listen-client-urls") + 1].rsplit(":", 1)[1])
            if name in proc.name():
                return next(c.laddr.port for c in proc.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
        except (psutil.NoSuchProcess, StopIteration):
            continue
    raise AssertionError(f"no {name} under the head")


def refuses_without_a_certificate(port: int, ca: str) -> str:
    """Speak TLS to ``port`` trusting ``ca`` but showing no certificate: what the server says (an error)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as sock:
            try:
                sock.sendall(b"PING\r\n")
                data = sock.recv(100)
            except (ssl.SSLError, OSError) as exc:
                return f"refused: {exc}"
            return f"answered {data!r}" if data else "refused: closed"


@pytest.mark.parametrize("kind", ["etcd", "redis"])
def test_a_tls_head_s_private_metadata_server_wants_a_certificate_of_the_cluster(cluster_env, kind):
    env = cluster_env
    head = start_head(env, "--tls", "--metadata", kind)
    mine = os.path.join(env["ANYRAY_CLUSTER_DIR"], "tls")
    port = metadata_port(env, "etcd" if kind == "etcd" else "redis-server")
    said = refuses_without_a_certificate(port, os.path.join(mine, "ca.crt"))
    assert said.startswith("refused"), said
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # and nothing in clear
        sock.settimeout(10)
        sock.sendall(b"PING\r\n" if kind == "redis" else b"GET /version HTTP/1.0\r\n\r\n")
        try:
            answer = sock.recv(4096)
        except OSError:
            answer = b""
        assert b"PONG" not in answer and b"etcdserver" not in answer and b"NOAUTH" not in answer
    if kind == "etcd":  # with the cluster's certificate, the store is there
        from anyray.adapters.metadata import open_metadata

        store = open_metadata(f"etcd://127.0.0.1:{port}?ca={mine}/ca.crt&cert={mine}/node.crt&key={mine}/node.key")
        try:
            assert any(key.startswith("nodes/") for key, _ in store.scan("nodes/"))
        finally:
            store.close()
    result = driver(env, "print('SUM', sum(anyray.get([anyray.remote(lambda i: i).remote(i) for i in range(5)])))")
    assert "SUM 10" in result.stdout, result.stderr
    assert head["address"]
