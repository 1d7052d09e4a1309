"""The private metadata server of a head node started without ``--metadata``.

``anyray start --head`` alone starts a Redis server (or, where only etcd is
installed, an etcd server) for the cluster: on a free port of the node's
address, with a random password (Redis), its files in the cluster
directory, stopped with the head. Its URL reaches other nodes only over the
cluster's authenticated connections.

With TLS (``tls``: the head's ``TLSFiles``), a private etcd serves clients and its peer port over TLS
and asks every client for a certificate the cluster's CA signed (``--client-cert-auth``); its URL names
the files a client connects with (``etcd://HOST:PORT?ca=..&cert=..&key=..``). A private Redis serves
TLS only (``port 0``, ``tls-port``) with ``tls-auth-clients yes``, its password kept
(``rediss://:PASSWORD@HOST:PORT/0?ssl_ca_certs=..&ssl_certfile=..&ssl_keyfile=..``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from urllib.parse import quote, urlencode

from .launch import MEMORY  # noqa: F401 - the private cluster's metadata kind: no server (defined there, see it)

TRIES = 5  # a free port found by binding to 0 may be taken before the server binds it


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MetadataServer:
    def __init__(self, proc: subprocess.Popen, url: str, directory: str):
        self.proc, self.url, self.directory = proc, url, directory

    def __repr__(self) -> str:  # the URL holds the password
        return f"MetadataServer(pid={self.proc.pid})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(os.path.join(self.directory, "etcd-data"), ignore_errors=True)


def start(kind: str | None, directory: str, host: str = "127.0.0.1", port: int = 0,
          password: str | None = None, tls=None) -> MetadataServer:
    """Start ``kind`` ("redis", "etcd", or None for whichever is installed, Redis first) on ``port``
    (0: a free one); a Redis with ``password`` (``--redis-password``), else a random one; TLS with ``tls``."""
    return Launch(kind, directory, host, port, password, tls).result()


class Launch:
    """A metadata server on its way up: its process is started at once, ``result()`` waits until it serves
    (and raises what ``start`` would). A node daemon starts it first, so the server comes up while the
    daemon loads; ``stop()`` stops whatever was started, served or not."""

    def __init__(self, kind: str | None, directory: str, host: str = "127.0.0.1", port: int = 0,
                 password: str | None = None, tls=None):
        self._args = (directory, host, port)
        self._tls = tls
        self._server: MetadataServer | None = None
        self._error: BaseException | None = None
        self._first: subprocess.Popen | None = None
        self._first_port = port
        self._binary = None
        try:
            self._kind, self._binary = _which(kind)
            if self._kind == "redis":
                if password is not None and any(c in password for c in "\n\r\"\\"):
                    raise ValueError("The Redis password cannot hold a newline, a quote or a backslash.")
                self._password = password or secrets.token_hex(16)
                self._first_port = port or _free_port(host)
                self._first = _spawn_redis(self._binary, directory, host, self._first_port, self._password, tls)
            else:
                self._first_port = port or _free_port(host)
                self._first = _spawn_etcd(self._binary, directory, host, self._first_port, tls)
        except (OSError, ValueError) as exc:
            self._error = exc

    def __repr__(self) -> str:
        return f"Launch({self._server!r})"

    def result(self) -> MetadataServer:
        if self._error is not None:
            raise self._error
        if self._server is None:
            directory, host, port = self._args
            if self._kind == "redis":
                self._server = _start_redis(self._binary, directory, host, port, self._password,
                                            first=(self._first, self._first_port), tls=self._tls)
            else:
                self._server = _start_etcd(self._binary, directory, host, port, first=(self._first, self._first_port),
                                           tls=self._tls)
            self._first = None
        return self._server

    def stop(self) -> None:
        if self._first is not None:
            _kill(self._first)
            self._first = None
        if self._server is not None:
            self._server.stop()


def tls_files(paths: dict):
    """The ``TLSFiles`` of ``paths`` (a daemon's settings), without loading the node's side first."""
    from .tls import TLSFiles

    return TLSFiles(**paths)


def _which(kind: str | None) -> tuple[str, str]:
    kinds = [kind] if kind else ["redis", "etcd"]
    for k in kinds:
        binary = shutil.which("redis-server" if k == "redis" else "etcd")
        if binary is not None:
            return k, binary
    raise FileNotFoundError(
        f"Neither {' nor '.join('redis-server' if k == 'redis' else 'etcd' for k in kinds)} is installed, so the "
        f"head cannot start a metadata server of its own. Install one (apt-get install redis-server) or pass "
        f"--metadata redis://... or etcd://... of a running server.")


def _spawn_redis(binary: str, directory: str, host: str, port: int, password: str, tls=None) -> subprocess.Popen:
    # The password goes through stdin as a config file, not argv, which every user can read.
    proc = subprocess.Popen(
        [binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    config = (f"port {0 if tls else port}\nbind {host}\nsave \"\"\nappendonly no\nrequirepass \"{password}\"\n"
              f"dir {directory}\ndaemonize no\nlogfile {os.path.join(directory, 'redis.log')}\n"
              f"notify-keyspace-events Ex\n")
    if tls:  # TLS only, and a client must show a certificate of the cluster's CA
        config += (f"tls-port {port}\ntls-cert-file {tls.cert}\ntls-key-file {tls.key}\n"
                   f"tls-ca-cert-file {tls.ca}\ntls-auth-clients yes\n")
    try:
        proc.stdin.write(config.encode())
        proc.stdin.close()
    except OSError:
        pass  # it died already: the wait for its port sees it
    return proc


def _start_redis(binary: str, directory: str, host: str, fixed: int, password: str,
                 first: tuple[subprocess.Popen | None, int] = (None, 0), tls=None) -> MetadataServer:
    proc, port = _start(lambda port: _spawn_redis(binary, directory, host, port, password, tls), host, fixed, first,
                        f"redis-server did not start; see {directory}/redis.log")
    if tls:
        return MetadataServer(proc, f"rediss://:{quote(password, safe='')}@{host}:{port}/0?" + urlencode(
            {"ssl_ca_certs": tls.ca, "ssl_certfile": tls.cert, "ssl_keyfile": tls.key}), directory)
    return MetadataServer(proc, f"redis://:{quote(password, safe='')}@{host}:{port}/0", directory)


def _start(spawn, host: str, fixed: int, first: tuple[subprocess.Popen | None, int], failed: str):
    """A server process listening on ``fixed``, or on a free port (tried a few times: another process may
    take a free port first); ``first``: one already spawned. Its process and port; RuntimeError(failed)."""
    started, started_port = first
    for _ in range(1 if fixed else TRIES):
        if started is not None:
            proc, port, started = started, started_port, None
        else:
            port = fixed or _free_port(host)
            proc = spawn(port)
        if _wait_port(proc, host, port):
            return proc, port
        _kill(proc)
    raise RuntimeError(failed)


def _spawn_etcd(binary: str, directory: str, host: str, port: int, tls=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}  # etcd exits on a conflict
    peer = _free_port(host)
    scheme = "https" if tls else "http"
    client_url, peer_url = f"{scheme}://{host}:{port}", f"{scheme}://{host}:{peer}"
    secure = []
    if tls:  # clients and the peer port: TLS, and a certificate of the cluster's CA required
        secure = ["--cert-file", tls.cert, "--key-file", tls.key, "--trusted-ca-file", tls.ca, "--client-cert-auth",
                  "--peer-cert-file", tls.cert, "--peer-key-file", tls.key, "--peer-trusted-ca-file", tls.ca,
                  "--peer-client-cert-auth"]
    data = os.path.join(directory, "etcd-data")
    shutil.rmtree(data, ignore_errors=True)
    with open(os.path.join(directory, "etcd.log"), "ab") as log:
        return subprocess.Popen(
            [binary, "--name", "anyray", "--data-dir", data, "--listen-client-urls", client_url,
             "--advertise-client-urls", client_url, "--listen-peer-urls", peer_url,
             "--initial-advertise-peer-urls", peer_url, "--initial-cluster", f"anyray={peer_url}",
             "--heartbeat-interval", "10", "--election-timeout", "100", "--logger", "zap",
             "--log-level", "warn", *secure], stdout=log, stderr=log, env=env, start_new_session=True)


def _start_etcd(binary: str, directory: str, host: str, fixed: int,
                first: tuple[subprocess.Popen | None, int] = (None, 0), tls=None) -> MetadataServer:
    proc, port = _start(lambda port: _spawn_etcd(binary, directory, host, port, tls), host, fixed, first,
                        f"etcd did not start; see {directory}/etcd.log")
    if tls:
        return MetadataServer(proc, f"etcd://{host}:{port}?" + urlencode(
            {"ca": tls.ca, "cert": tls.cert, "key": tls.key}), directory)
    return MetadataServer(proc, f"etcd://{host}:{port}", directory)


def _wait_port(proc: subprocess.Popen, host: str, port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host.encode() if host.isascii() else host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.01)
    return False


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
