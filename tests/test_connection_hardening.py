"""A node's doors under abuse, with a real ``anyray start`` daemon: a connection that does not authenticate is
closed after ``HANDSHAKE_SECONDS`` (on the TCP port and on the node's Unix socket for workers), and a loopback
flood of 2,000 connections (idle ones, garbage senders, bounded in time) leaves the node serving its drivers
(one connected before, one connecting during the flood), holding no thread per waiting connection, and back to
its threads and file descriptors once the flood stops."""

from __future__ import annotations

import os
import random
import select
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import psutil
from test_cluster import WAIT, start_head, wait_until

from anyray.adapters.node.gate import HANDSHAKE_SECONDS, MAX_PENDING

FLOOD = 2000          # connections open at once at the flood's height
FLOOD_SECONDS = 120.0 # the flood's bound: it stops then even if the test did not stop it
SLACK = 60.0          # generous: a busy 2-core machine


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """True once the other end closes ``sock`` (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return True


def unix_socket_of(pid: int) -> str:
    sockets = [c.laddr for c in psutil.Process(pid).net_connections(kind="unix")
               if c.laddr and c.laddr.endswith("workers.sock")]
    assert sockets, "the node listens on no workers.sock"
    return sockets[0]


class Flood(threading.Thread):
    """Keeps up to ``FLOOD`` loopback connections open to ``address``: a third idle, a third sending random
    bytes, a third sending a frame too long to be a challenge's answer; reopens those the node closes."""

    def __init__(self, host: str, port: int):
        super().__init__(daemon=True, name="flood")
        self.host, self.port = host, port
        self.stop = threading.Event()
        self.opened = self.closed_by_node = self.peak = 0
        self.socks: list[socket.socket] = []

    def _open(self, n: int) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=10)
        except OSError:
            return
        self.opened += 1
        if n % 3 == 1:
            sock.sendall(random.randbytes(64))
        elif n % 3 == 2:
            sock.sendall(struct.pack("!i", 1 << 20) + b"x" * 32)
        sock.setblocking(False)
        self.socks.append(sock)

    def run(self) -> None:
        deadline = time.monotonic() + FLOOD_SECONDS
        n = 0
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                while len(self.socks) < FLOOD and not self.stop.is_set():
                    self._open(n)
                    n += 1
                self.peak = max(self.peak, len(self.socks))
                poller, by_fd = select.poll(), {}
                for sock in self.socks:
                    poller.register(sock, select.POLLIN)
                    by_fd[sock.fileno()] = sock
                for fd, _event in poller.poll(50):
                    sock = by_fd[fd]
                    try:
                        gone = not sock.recv(4096)
                    except BlockingIOError:
                        gone = False
                    except OSError:
                        gone = True
                    if gone:
                        self.closed_by_node += 1
                        self.socks.remove(sock)
                        sock.close()
        finally:
            for sock in self.socks:
                sock.close()
            self.socks.clear()


DRIVER = textwrap.dedent("""
    import sys, anyray
    anyray.init(address=sys.argv[1])
    square = anyray.remote(lambda x: x * x)
    print("ready", flush=True)
    for line in sys.stdin:
        print(sum(anyray.get([square.remote(i) for i in range(int(line))])), flush=True)
""")


def ask(driver: subprocess.Popen, n: int) -> int:
    driver.stdin.write(f"{n}\n")
    driver.stdin.flush()
    line = driver.stdout.readline()
    assert line, f"the driver died: {driver.stderr.read()}"
    return int(line)


def test_an_unauthenticated_connection_is_closed_after_the_handshake_deadline(cluster_env):
    head = start_head(cluster_env)
    host, port = head["address"].rsplit(":", 1)
    workers_sock = unix_socket_of(head["pid"])
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=WAIT) as tcp, \
            socket.socket(socket.AF_UNIX) as unix:
        unix.connect(workers_sock)
        assert tcp.recv(64, socket.MSG_PEEK).find(b"#CHALLENGE#") >= 0  # the node spoke, and waits for us
        assert closed_by_peer(tcp, HANDSHAKE_SECONDS + SLACK)
        assert closed_by_peer(unix, HANDSHAKE_SECONDS + SLACK)
    assert time.monotonic() - started >= HANDSHAKE_SECONDS * 0.9  # not before the deadline
    log = os.path.join(cluster_env["ANYRAY_CLUSTER_DIR"], "logs", f"node-{head['pid']}.log")
    line = f"did not answer the challenge within {HANDSHAKE_SECONDS:g} s"
    wait_until(lambda: line in open(log).read(), "the refusal in the node's log")  # written after the close


def test_a_flood_of_connections_does_not_stop_the_node_serving_its_drivers(cluster_env):
    head = start_head(cluster_env)
    host, port = head["address"].rsplit(":", 1)
    node = psutil.Process(head["pid"])
    before = subprocess.Popen([sys.executable, "-c", DRIVER, head["address"]], env=cluster_env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    flood = Flood(host, int(port))
    try:
        assert before.stdout.readline().strip() == "ready", before.stderr.read()
        assert ask(before, 4) == 14
        time.sleep(HANDSHAKE_SECONDS)  # the node settled: its threads and descriptors now are the normal ones
        threads, fds = node.num_threads(), node.num_fds()

        flood.start()
        wait_until(lambda: flood.opened >= FLOOD, "the flood's connections opened")
        during_threads = node.num_threads()
        assert flood.is_alive()
        assert ask(before, 10) == 285  # the driver connected before the flood is served during it
        during = subprocess.run([sys.executable, "-c", DRIVER, head["address"]], env=cluster_env, text=True,
                                input="6\n", capture_output=True, timeout=WAIT * 2)
        assert during.returncode == 0, during.stderr
        assert during.stdout.split() == ["ready", "55"]  # and a driver that connected during it
        assert flood.is_alive() and flood.peak >= FLOOD // 2, "the flood stopped before the drivers ran"
        assert during_threads < threads + 50  # no thread per waiting connection (2,000 were open)
        assert flood.closed_by_node > 0  # the node dropped flood connections (deadline, garbage, the bound)
    finally:
        flood.stop.set()
        flood.join(WAIT)
    assert flood.opened >= FLOOD

    def settled():
        return node.num_threads() <= threads + 5 and node.num_fds() <= fds + 5
    wait_until(settled, f"the node's threads ({threads}) and descriptors ({fds}) back to normal after the flood",
               timeout=HANDSHAKE_SECONDS + SLACK)
    assert ask(before, 3) == 5  # and it still serves
    before.stdin.close()
    assert before.wait(WAIT) == 0
    assert MAX_PENDING < FLOOD  # the bound on waiting connections was exercised too
