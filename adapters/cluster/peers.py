"""A node's connections to the other nodes: requests with callbacks, and bulk object transfer.

``PeerLink`` is the link a node opens to another node to hand it work and to
read its objects. The node is the other node's client, exactly as a driver
is (the same requests, the same borrowing of references), but answers arrive
on a reader thread of the link's own and go to callbacks, because the
scheduler's threads must never wait on another node.

Objects in shared memory move by pull (``Transfer``): the receiver reserves
a range of its own arena and reads the object's bytes from the sender's
object server on a socket of their own, in chunks, straight into that range;
the sender sends them straight from its arena. Nothing is copied in user
space on either side.
"""

from __future__ import annotations

import logging
import pickle
import socket
import struct
import threading

from ..node import framing
from ..node import messages as m
from ..node.arena import Location
from ..node.link import Link
from . import tls
from .client import handshake, open_connection

log = logging.getLogger(__name__)

CHUNK = 8 << 20  # bytes per transfer request; requests are pipelined, so this only bounds one send
_RANGE = struct.Struct("<QQ")


class NotSent(ConnectionError):
    """A request that never left: the other node was gone before it could be sent."""


class PeerLink(Link):
    """This node as a client of another node."""

    def __init__(self, conn, setup: dict, address: str, on_close, on_stream=None):
        setup = dict(setup, arena=None)  # another node's memory is never mapped here
        super().__init__(conn, setup)
        self.address = address
        self.node_id = setup["node_id"]
        self._callbacks: dict = {}
        self._callbacks_lock = threading.Lock()
        self.functions: set[bytes] = set()  # function ids the other node has the code of
        self._on_close = on_close
        self.closed = False
        # what the other node sends, by tag (others are ignored): answers, and the objects of the streams of
        # generators this node handed it (``on_stream(link, payload)``, on this link's reader, in order)
        self.handlers = {m.RESPONSE: self._on_answer}
        if on_stream is not None:
            self.handlers[m.STREAM] = lambda payload: on_stream(self, payload)
        threading.Thread(target=self._read_loop, name=f"anyray-peer-{address}", daemon=True).start()
        threading.Thread(target=self._flush_loop, name="anyray-peer-flush", daemon=True).start()

    @classmethod
    def connect(cls, address: str, token: bytes, on_close, on_stream=None) -> PeerLink:
        conn = open_connection(address, token)
        try:
            setup = handshake(conn, "node")
        except BaseException:
            conn.close()
            raise
        return cls(conn, setup, address, on_close, on_stream)

    def call(self, op: str, args, callback) -> None:
        """Ask the other node; ``callback(ok, value)`` runs on this link's reader thread with the answer
        (``ok`` False and a ``ConnectionError`` if the node goes first)."""
        rid = next(self._request_ids)
        with self._callbacks_lock:
            if self.closed:
                gone = True
            else:
                gone = False
                self._callbacks[rid] = callback
        if gone:
            callback(False, NotSent(f"The node at {self.address} is gone."))
            return
        try:
            self.send(m.REQUEST, m.Request.pack(rid, op, args))
        except OSError as exc:
            with self._callbacks_lock:
                self.closed = True
                mine = self._callbacks.pop(rid, None) is not None
            if mine:
                callback(False, NotSent(f"The node at {self.address} is gone: {exc}"))

    def hold(self, oid: bytes) -> None:
        """Keep ``oid`` alive on the other node for this one (its references are borrowed)."""
        self.note("_refs", oid, 1)

    def let_go(self, oid: bytes) -> None:
        self.note("_refs", oid, -1)

    def hold_actor(self, actor_id: bytes) -> None:
        """Keep the actor alive on the other node for this one (it holds handles to it)."""
        self.note("_handles", actor_id, 1)

    def let_go_actor(self, actor_id: bytes) -> None:
        self.note("_handles", actor_id, -1)

    def unpin(self, oid: bytes) -> None:
        """This node has read the shared-memory range the other pinned for it under ``oid``."""
        self._unpins.append(oid)

    def flush(self) -> None:
        """Send the reference changes noted so far now, ahead of anything else."""
        try:
            self.send(m.REFS, None)
        except OSError:
            pass

    def _flush_loop(self) -> None:
        import time

        while not self.closed:
            time.sleep(0.1)
            if (self._refs or self._handles or self._unpins) and time.monotonic() - self._last_send >= 0.1:
                self.flush()

    def _read_loop(self) -> None:
        conn = self.conn
        try:
            handlers = self.handlers
            while True:
                msg = conn.recv_bytes()
                handler = handlers.get(msg[0])
                if handler is not None:
                    handler(memoryview(msg)[1:])
        except Exception:  # noqa: BLE001 - closed (EOF, reset, or closed under us): every waiter hears of it
            pass
        finally:
            with self._callbacks_lock:
                self.closed = True
            self._fail_waiting()
            self._on_close(self)
            try:
                conn.close()
            except OSError:
                pass

    def _on_answer(self, payload) -> None:
        """RESPONSE: run the callback of its request, on this reader thread."""
        answer = m.Response._make(pickle.loads(payload))
        callback = self._callbacks.pop(answer.rid, None)
        if callback is not None:
            try:
                callback(answer.ok, answer.value)
            except Exception:  # noqa: BLE001 - one bad answer must not stop the link
                log.exception("handling an answer of the node at %s failed", self.address)

    def _fail_waiting(self) -> None:
        with self._callbacks_lock:  # the reader and close() may both get here: each callback runs once
            callbacks, self._callbacks = self._callbacks, {}
        gone = ConnectionError(f"The connection to the node at {self.address} closed.")
        for callback in callbacks.values():
            try:
                callback(False, gone)
            except Exception:  # noqa: BLE001
                log.exception("telling a waiter that the link to %s closed failed", self.address)

    def close(self) -> None:
        """Close the link: its reader wakes (a bare close would leave it blocked in recv when the other
        node is silent rather than gone) and every answer still awaited fails."""
        with self._callbacks_lock:
            self.closed = True
        framing.wake(self.conn)
        self._fail_waiting()

    def _dispatch(self, msg: bytes) -> None:  # every message is read by _read_loop
        raise AssertionError("a peer link is read by its own thread")


class Transfer:
    """Pulls object bytes from other nodes' object servers; one socket per pull in flight, reused."""

    def __init__(self, token: bytes):
        self._token = token
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()

    def pull(self, address: str, loc: Location, dest: memoryview) -> None:
        """Read ``loc.nbytes`` bytes at the remote ``loc.offset`` into ``dest``."""
        sock = self._socket(address)
        try:
            total = loc.nbytes
            requests = b"".join(_RANGE.pack(loc.offset + start, min(CHUNK, total - start))
                                for start in range(0, total, CHUNK))
            sock.sendall(requests)
            got = 0
            while got < total:
                n = sock.recv_into(dest[got:], total - got)
                if n == 0:
                    raise ConnectionError(f"The node at {address} closed the transfer after {got} of {total} bytes.")
                got += n
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._idle.setdefault(address, []).append(sock)

    def _socket(self, address: str) -> socket.socket:
        with self._lock:
            idle = self._idle.get(address)
            if idle:
                return idle.pop()
        conn = open_connection(address, self._token)
        try:
            handshake(conn, "transfer")
        except BaseException:
            conn.close()
            raise
        return tls.raw_socket(conn)  # a TLS socket on a TLS cluster: recv_into still lands in place

    def close(self) -> None:
        with self._lock:
            for socks in self._idle.values():
                for sock in socks:
                    sock.close()
            self._idle.clear()


def serve_transfers(sock: socket.socket, arena) -> None:
    """The object server's side of one transfer socket: send each requested range of ``arena``."""
    buf = bytearray(_RANGE.size)
    try:
        while True:
            got = 0
            while got < _RANGE.size:
                n = sock.recv_into(memoryview(buf)[got:])
                if n == 0:
                    return
                got += n
            offset, length = _RANGE.unpack(buf)
            sock.sendall(arena.view(offset, length))
    except (OSError, ValueError) as exc:
        if not isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.info("a transfer ended: %s", exc)
    finally:
        sock.close()
