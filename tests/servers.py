"""Real Redis and etcd servers for tests: started on free loopback ports in temporary directories,
stopped by their pid. Never the system's services, never the standard ports."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time

import pytest

START_TRIES = 5  # a port picked by binding to 0 can be taken by someone else before the server binds it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, url: str, directory: str):
        self.proc, self.port, self.url, self.directory = proc, port, url, directory

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer(Server):
    """``redis-server`` with a password, expiry events on, and no persistence (with ``appendonly``: every write
    in an append-only file in ``directory``, so a server restarted there comes back with what it had)."""

    @classmethod
    def start(cls, directory: str, port: int | None = None, password: str | None = None,
              keyspace_events: bool = True, appendonly: bool = False) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
        password = password or secrets.token_hex(8)
        for _ in range(START_TRIES):
            p = port or free_port()
            proc = subprocess.Popen(
                [binary, "--port", str(p), "--bind", "127.0.0.1", "--save", "",
                 *(["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]),
                 "--requirepass", password, "--dir", directory, "--daemonize", "no",
                 "--logfile", os.path.join(directory, "redis.log"),
                 *(["--notify-keyspace-events", "Ex"] if keyspace_events else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            server = cls(proc, p, f"redis://:{password}@127.0.0.1:{p}/0", directory)
            server.password = password
            if server._wait_ready():
                return server
            server.stop()
            if port is not None:
                break
        pytest.fail(f"redis-server did not start; see {directory}/redis.log")

    def _wait_ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(f"AUTH {self.password}\r\nPING\r\n".encode())
                    if b"+PONG" in s.recv(100) or b"+PONG" in s.recv(100):
                        return True
            except OSError:
                pass
            time.sleep(0.01)
        return False


class EtcdServer(Server):
    """A one-member ``etcd`` with fast election timings and its data in ``directory``."""

    @classmethod
    def start(cls, directory: str, port: int | None = None) -> EtcdServer:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed; tests/install-servers.sh installs it (apt-get install etcd-server)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}  # etcd 3.4 exits on a conflict
        for _ in range(START_TRIES):
            p, peer = port or free_port(), free_port()
            proc = subprocess.Popen(
                [binary, "--name", "n", "--data-dir", os.path.join(directory, "data"),
                 "--listen-client-urls", f"http://127.0.0.1:{p}", "--advertise-client-urls", f"http://127.0.0.1:{p}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"n=http://127.0.0.1:{peer}", "--heartbeat-interval", "10",
                 "--election-timeout", "100", "--logger", "zap", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(directory, "etcd.log"), "ab"), env=env)
            server = cls(proc, p, f"etcd://127.0.0.1:{p}", directory)
            if server._wait_ready():
                return server
            server.stop()
            if port is not None:
                break
        pytest.fail(f"etcd did not start; see {directory}/etcd.log")

    def _wait_ready(self, timeout: float = 15.0) -> bool:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=0.5) as r:
                    if b'"health":"true"' in r.read():
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False


class TcpProxy:
    """A loopback TCP relay to ``port`` whose connections a test can cut: ``cut()`` closes every relayed
    connection and refuses new ones until ``mend()``, as a network fault between one client and its server
    would (the server and its other clients go on). ``lose_next_answer()``: the server's next answer is
    dropped and its connection cut (the command was applied, its answer never reached the client);
    ``lost`` counts them."""

    def __init__(self, port: int):
        import threading

        self.target = port
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._closed = False
        self._losing = threading.Event()
        self.lost = 0
        threading.Thread(target=self._accept, daemon=True, name="test-proxy").start()

    def lose_next_answer(self) -> None:
        self._losing.set()

    def _accept(self) -> None:
        import threading

        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                if self._refusing:
                    client.close()
                    continue
                try:
                    server = socket.create_connection(("127.0.0.1", self.target))
                except OSError:
                    client.close()
                    continue
                self._open += [client, server]
            for a, b, answers in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(a, b, answers), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and self._losing.is_set():
                    self._losing.clear()
                    self.lost += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self._open.clear()

    def mend(self) -> None:
        with self._lock:
            self._refusing = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._sock.close()


class EtcdCluster:
    """Three ``etcd`` members on loopback forming one cluster (``url`` names all three); ``members[i]`` can be
    stopped (killed) alone."""

    def __init__(self, directory: str, size: int = 3):
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd is not installed; tests/install-servers.sh installs it (apt-get install etcd-server)")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        clients = [free_port() for _ in range(size)]
        peers = [free_port() for _ in range(size)]
        initial = ",".join(f"m{i}=http://127.0.0.1:{peers[i]}" for i in range(size))
        token = secrets.token_hex(6)
        self.members: list[EtcdServer] = []
        for i in range(size):
            member_dir = os.path.join(directory, f"m{i}")
            os.makedirs(member_dir, exist_ok=True)
            proc = subprocess.Popen(
                [binary, "--name", f"m{i}", "--data-dir", os.path.join(member_dir, "data"),
                 "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
                 "--advertise-client-urls", f"http://127.0.0.1:{clients[i]}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
                 "--initial-cluster", initial, "--initial-cluster-token", token,
                 "--initial-cluster-state", "new", "--heartbeat-interval", "50",
                 "--election-timeout", "500", "--logger", "zap", "--log-level", "warn"],
                stdout=subprocess.DEVNULL, stderr=open(os.path.join(member_dir, "etcd.log"), "ab"), env=env)
            self.members.append(EtcdServer(proc, clients[i], f"etcd://127.0.0.1:{clients[i]}", member_dir))
        if not all(m._wait_ready(30) for m in self.members):
            self.stop()
            pytest.fail(f"the etcd cluster did not start; see {directory}/m*/etcd.log")
        self.url = "etcd://" + ",".join(f"127.0.0.1:{p}" for p in clients)

    def stop(self) -> None:
        for m in self.members:
            m.stop()
