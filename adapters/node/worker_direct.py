"""The direct socket of a worker that hosts a sync actor on a cluster node: calls straight from drivers.

A driver on the same machine (``cluster/direct.py``) connects to the Unix
socket ``direct-<pid>`` in the node's 0700 session directory, proves it
knows the key the node derived from the cluster token (the HMAC challenge
both ways, as every connection to a node), and sends the actor's calls as
``DIRECT_CALL`` frames; each result goes back on the same socket as a
``DIRECT_RESULT``. Small values travel in it; a large value, or one holding
references, is put to the node as the worker's own ``put`` would (ahead of
the answer), and the answer says so.

The main thread reads the direct sockets and the node's connection together
(``wait``), and always takes the calls waiting on the direct sockets before
a message from the node: a driver sends a call through its node only after
its direct calls are written to this socket, so the calls of one caller keep
their order.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import select
import socket
import threading
import time
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge

from . import messages as m
from .framing import frame, spin_budget
from .store import to_wire

log = logging.getLogger(__name__)

HANDSHAKE_SECONDS = 10.0
ADMITTED = b"admitted"  # the answer to a driver once its socket is taken in: before it, a call the driver then
# sent through the node could be read ahead of the calls on the socket (the accepting thread may lag)


def socket_path(directory: str, pid: int) -> str:
    """Where the process ``pid`` of a node listens for direct calls (the node's session directory)."""
    return os.path.join(directory, f"direct-{pid}")


def tcp_path(directory: str, pid: int) -> str:
    """The file where the process ``pid`` of a node writes the TCP address it also takes direct calls on."""
    return socket_path(directory, pid) + ".tcp"


def tcp_address(directory: str, pid: int) -> str | None:
    """The ``tcp://host:port/<directory>`` drivers on other machines reach the process ``pid`` at (the
    directory names the key), or None when it takes direct calls on its Unix socket only."""
    try:
        with open(tcp_path(directory, pid)) as f:
            return f"tcp://{f.read().strip()}{directory}"
    except OSError:
        return None


class DirectServer:
    """The direct sockets of one actor process: the listener (a thread accepts and authenticates) and
    the connections of the drivers, read by the main thread."""

    def __init__(self, node, direct: dict):
        self.node = node
        self._key = direct["key"]
        self.path = socket_path(direct["dir"], os.getpid())
        self.conns: dict[int, Connection] = {}
        self._new: collections.deque = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poller = select.poll()
        self._poller.register(node._fd, select.POLLIN)
        self._poller.register(self._wake_r, select.POLLIN)
        self._direct = select.poll()  # the direct sockets alone
        self.cancelled: collections.deque = collections.deque(maxlen=256)  # cancels read before their call
        self._drain_lock = threading.Lock()
        listeners = ()
        self.tcp = None  # its tcp://host:port/<directory> (tcp_address), when it listens on TCP too
        host = direct.get("tcp")  # a node without TLS: drivers on other machines, and other nodes' drivers
        from .gate import Gate, listen_unix  # the node's door: the challenge and its deadline, no thread each

        try:
            if host:  # written before the Unix socket exists, which tells the node the process is ready
                tcp = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                           backlog=128)
                listeners = (tcp,)
                port = tcp.getsockname()[1]
                where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                with open(os.open(tcp_path(direct["dir"], os.getpid()), os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                                  0o600), "w") as f:
                    f.write(where)
                self.tcp = tcp_address(direct["dir"], os.getpid())
            unix = listen_unix(self.path)
        except OSError:
            for listener in listeners:
                listener.close()
            raise
        self._gate = Gate((unix, *listeners), self._key, self._admit, "anyray-direct-accept").start()

    def _admit(self, conn: Connection, peer=None) -> None:
        """A driver that proved it holds the key (the gate checked its answer): prove it back."""
        if isinstance(peer, tuple):  # TCP: no Nagle delay (a frame's header and body are separate writes),
            sock = socket.socket(fileno=os.dup(conn.fileno()))  # and a driver's machine that vanished ends it
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            finally:
                sock.close()
        timer = threading.Timer(HANDSHAKE_SECONDS, conn.close)
        timer.daemon = True
        timer.start()
        try:
            answer_challenge(conn, self._key)
        except (AuthenticationError, EOFError, OSError):
            conn.close()
            return
        finally:
            timer.cancel()
        self._new.append(conn)
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass
        try:  # taken in: any thread that reads a call from the node from now on drains this socket first
            conn.send_bytes(ADMITTED)
        except OSError:
            pass

    # -- the main thread ----------------------------------------------------------------
    def wait(self, node_conn):
        """Wait for the next message: queue the direct calls that came; return a message from the node,
        or None when only direct calls (or new connections) came."""
        poller = self._poller
        events = poller.poll(0)
        if not events:
            deadline = time.perf_counter() + spin_budget()
            while not events and time.perf_counter() < deadline:
                events = poller.poll(0)
            if not events:
                events = poller.poll()
        self.drain()
        node_fd = self.node._fd
        if any(fd == node_fd for fd, _ in events):  # only this thread reads it now: still readable
            return node_conn.recv_bytes()
        return None

    def drain(self) -> None:
        """Queue the direct calls that have arrived, on every direct socket (and take new sockets in).

        Called before a message from the node is handled, on whichever thread reads it (the main thread
        runs a call and waits in a ``get``, say): a call read from the node goes behind them."""
        with self._drain_lock:
            self._drain()

    def _drain(self) -> None:
        if self._new:
            try:
                os.read(self._wake_r, 4096)
            except OSError:
                pass
            while self._new:
                conn = self._new.popleft()
                self.conns[conn.fileno()] = conn
                self._poller.register(conn.fileno(), select.POLLIN)
                self._direct.register(conn.fileno(), select.POLLIN)
        if not self.conns:
            return
        while True:  # one poll of the direct sockets per round (a Connection's poll builds a selector)
            ready = self._direct.poll(0)
            if not ready:
                return
            for fd, _ in ready:
                conn = self.conns.get(fd)
                if conn is None:
                    continue
                try:
                    self._on_message(conn, conn.recv_bytes())
                except (EOFError, OSError):
                    self._drop(fd, conn)

    def _drop(self, fd: int, conn: Connection) -> None:
        self.conns.pop(fd, None)
        for poller in (self._poller, self._direct):
            try:
                poller.unregister(fd)
            except (KeyError, ValueError):
                pass
        conn.close()

    def _on_message(self, conn: Connection, msg: bytes) -> None:
        if msg[0] == m.DIRECT_TASK:  # a task on a driver's lease of this worker (read on the main thread)
            self.node._tasks.append((self.node.run_direct_task, (conn, msg)))
            return
        if msg[0] != m.DIRECT_CALL:
            log.error("a direct socket got a message it has no handler for (tag %s)", msg[0])
            return
        call = m.ActorCall._make(pickle.loads(memoryview(msg)[1:]))
        node = self.node
        node._tasks.append((node.inline.call_direct, (conn, call)))

    def reply(self, conn: Connection, task_id: bytes, return_ids: list, outputs: list) -> None:
        """Send a direct call's outputs to its driver: small ones inline, others put to the node first."""
        node = self.node
        output = node.output
        output.flush_streams()
        if output.lines:
            output.send()  # what the call printed goes to its driver ahead of the result, as on the node's path
        records = node.events.take() if node.events.outbox else []  # to the driver, which passes them on
        wires = []
        for oid, obj in zip(return_ids, outputs):
            if obj.nbytes < node.inline_max and not obj.contained_refs:
                wires.append(to_wire(obj))
                continue
            try:
                wire = node.to_node(obj)
            except Exception as exc:  # noqa: BLE001 - the store is full, say: the value is that error
                from anyray.executor import serialize_failure
                from anyray.specs import RemoteFailure

                wires.append(to_wire(serialize_failure(RemoteFailure(exc))))
                continue
            contained = m.contained_ids(obj.contained_refs) if obj.contained_refs else []
            node.tell("put", m.Put.pack(oid, wire, contained))
            wires.append(None)
        try:
            conn.send_bytes(frame(m.DIRECT_RESULT, m.dumps(m.DirectResult.pack(task_id, wires, records))))
        except OSError:
            pass  # the driver went away: nobody waits for it

    def close(self) -> None:
        for path in (self.path, self.path + ".tcp"):
            try:
                os.unlink(path)
            except OSError:
                pass
