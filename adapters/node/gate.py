"""The door of a node's listening sockets: one thread per listener holds every connection that has not yet
proved it holds the secret, with no thread per connection, and drops those that take too long.

A node's TCP port (drivers, other nodes) and its Unix socket (workers, fork servers) authenticate each
connection with ``multiprocessing.connection``'s challenge: the node sends a random challenge, the peer answers
with its HMAC under the shared secret. The ``Gate`` does that first step itself, in a selector loop: it
accepts, sends the challenge, and reads the answer as bytes arrive. A peer that answers right gets the usual
welcome and is handed, as a blocking ``Connection``, to ``admit(conn)`` on a thread of its own (the rest of
the handshake, where the node answers the peer's challenge, and then its service). A peer that answers wrong
gets the usual failure message; one that sends a malformed frame, closes, or has not answered within
``HANDSHAKE_SECONDS`` is closed. At most ``MAX_PENDING`` connections wait at once: past that the oldest waiting
one is dropped (an honest peer answers within milliseconds, a flood's connections idle the longest), and when
the process runs out of file descriptors the oldest waiting one is dropped too, instead of the listener
stopping. So a flood of connections costs the node file descriptors only while it lasts, and its drivers and
workers keep connecting.

With ``tls`` (a cluster's ``ServerTLS``), the gate first sends its banner in clear, then runs the TLS handshake
(the client's certificate checked) in the same loop, then the challenge inside TLS; an admitted peer's
connection is ``tls.connection(sock)``, and the same deadline covers the whole of it.
"""

from __future__ import annotations

import errno
import hmac
import multiprocessing.connection as mpc
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable

HANDSHAKE_SECONDS = 5.0  # an unauthenticated connection that has not answered the challenge by then is closed
MAX_PENDING = 512        # unauthenticated connections held at once; past it the oldest is dropped
REPORT_SECONDS = 10.0   # refusals are reported at most this often (a flood must not fill the log)
ACCEPT_BATCH = 64        # connections accepted per wake-up before the loop serves the others again
_ANSWER_MAX = 256        # as multiprocessing's: a longer answer is refused unread
_LENGTH = struct.Struct("!i")
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _challenge() -> tuple[bytes, Callable[[bytes, bytes], bool]]:
    """The challenge message multiprocessing's ``deliver_challenge`` sends on this Python, and its check."""
    if hasattr(mpc, "_verify_challenge"):  # Python 3.12+: a digest name prefix, any digest the peer names
        message = b"{sha256}" + os.urandom(40)

        def check(key: bytes, answer: bytes) -> bool:
            try:
                mpc._verify_challenge(key, message, answer)
            except mpc.AuthenticationError:
                return False
            return True
    else:
        message = os.urandom(mpc.MESSAGE_LENGTH)

        def check(key: bytes, answer: bytes) -> bool:
            return hmac.compare_digest(answer, hmac.new(key, message, "md5").digest())
    return message, check


def listen_unix(path: str, backlog: int = 128) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale file there is replaced)."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _Waiting:
    __slots__ = ("sock", "peer", "deadline", "buf", "check", "handshaking")

    def __init__(self, sock, peer, check, handshaking=False):
        self.sock, self.peer, self.check, self.handshaking = sock, peer, check, handshaking
        self.deadline = time.monotonic() + HANDSHAKE_SECONDS
        self.buf = b""


class Gate:
    """``Gate(listener, secret, admit, name)``: serves ``listener`` (a listening socket, or several in a
    tuple) from ``start()`` on;
    ``admit(conn, peer)`` runs on a new thread for each connection whose peer proved it holds ``secret``;
    ``report(line)``, if given, hears of refused connections (at most one line per ``REPORT_SECONDS``);
    ``tls``, if given, makes every connection TLS (see the module)."""

    def __init__(self, listener: socket.socket, secret: bytes, admit: Callable, name: str = "anyray-gate",
                 report: Callable[[str], None] | None = None, tls=None):
        self._listeners = listener if isinstance(listener, tuple) else (listener,)
        self._secret, self._admit, self._name = secret, admit, name
        self._tls = tls
        self._retry = (BlockingIOError, InterruptedError, *(tls.want if tls is not None else ()))
        self._report, self._reported, self._unreported = report, -REPORT_SECONDS, 0
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[int, _Waiting] = {}  # by fd, oldest first (every one has the same deadline span)
        self._wake_r, self._wake_w = socket.socketpair()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __repr__(self) -> str:
        return f"Gate({self._name!r}, waiting={len(self._waiting)})"

    @property
    def waiting(self) -> int:
        """Connections accepted that have not proved they hold the secret yet."""
        return len(self._waiting)

    def start(self) -> Gate:
        for listener in self._listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop accepting, close the connections still waiting (not the listener: its owner closes it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # ---- the loop

    def _run(self) -> None:
        try:
            while not self._closed:
                timeout = None
                if self._waiting:
                    timeout = max(0.0, next(iter(self._waiting.values())).deadline - time.monotonic())
                for key, _ in self._selector.select(timeout):
                    if key.data == "accept":
                        self._accept(key.fileobj)
                    elif key.data == "wake":
                        self._wake_r.recv(64)
                    elif key.fd in self._waiting:
                        self._read(self._waiting[key.fd])
                self._expire()
        finally:
            for w in list(self._waiting.values()):
                self._drop(w)
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_FDS and self._waiting:
                    self._drop(next(iter(self._waiting.values())))  # free a descriptor for the next one
                    continue
                if exc.errno in _OUT_OF_FDS:
                    time.sleep(0.05)  # nothing of ours to free: let the process's other descriptors go
                    return
                if listener.fileno() == -1:  # the owner closed the listener
                    self._closed = True
                return
            if len(self._waiting) >= MAX_PENDING:
                self._refuse(next(iter(self._waiting.values())), f"{MAX_PENDING} connections were waiting")
            self._greet(sock, peer)

    def _greet(self, sock: socket.socket, peer) -> None:
        message, check = _challenge()
        frame = mpc.CHALLENGE + message
        sock.setblocking(False)
        try:  # a fresh socket's send buffer takes these few bytes at once
            first = self._tls.banner if self._tls is not None else _LENGTH.pack(len(frame)) + frame
            if sock.send(first) != len(first):
                raise OSError("short send")
            if self._tls is not None:
                sock = self._tls.wrap(sock)
        except OSError:
            sock.close()
            return
        waiting = _Waiting(sock, peer, lambda answer: check(self._secret, answer), self._tls is not None)
        if waiting.handshaking:
            waiting.buf = _LENGTH.pack(len(frame)) + frame  # the challenge, sent once the handshake is done
        self._waiting[sock.fileno()] = waiting
        self._selector.register(sock, selectors.EVENT_READ, "peer")

    def _handshake(self, w: _Waiting) -> None:
        """The next step of a TLS handshake; then the challenge goes out inside TLS."""
        try:
            w.sock.do_handshake()
            challenge, w.buf = w.buf, b""
            w.handshaking = False
            if w.sock.send(challenge) != len(challenge):
                raise OSError("short send")
        except self._retry:
            return
        except OSError as exc:  # ssl's errors are OSErrors
            reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            self._refuse(w, f"its TLS handshake failed ({reason}): is it a client of this cluster, with TLS?")

    def _read(self, w: _Waiting) -> None:
        if w.handshaking:
            self._handshake(w)
            return
        try:
            data = w.sock.recv(_LENGTH.size + _ANSWER_MAX - len(w.buf))
        except self._retry:
            return
        except OSError:
            data = b""
        if not data:
            self._refuse(w, "it closed the connection without answering the challenge")
            return
        w.buf += data
        if len(w.buf) < _LENGTH.size:
            return
        (size,) = _LENGTH.unpack_from(w.buf)
        if not 0 <= size <= _ANSWER_MAX or len(w.buf) > _LENGTH.size + size:
            self._refuse(w, "what it sent is no answer to the challenge")  # or more: it did not wait for us
            return
        if len(w.buf) < _LENGTH.size + size:
            return
        self._forget(w)
        answer = w.buf[_LENGTH.size:]
        reply = mpc.WELCOME if w.check(answer) else mpc.FAILURE
        try:
            w.sock.setblocking(True)
            w.sock.sendall(_LENGTH.pack(len(reply)) + reply)
        except OSError:
            w.sock.close()
            return
        if reply is mpc.FAILURE:
            self._refuse(w, "it did not prove it holds the cluster token")
            return
        conn = self._tls.connection(w.sock) if self._tls is not None else mpc.Connection(w.sock.detach())
        threading.Thread(target=self._admit, args=(conn, w.peer), name=f"{self._name}-conn", daemon=True).start()

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if oldest.deadline > now:
                return
            self._refuse(oldest, f"it did not answer the challenge within {HANDSHAKE_SECONDS:g} s")

    def _refuse(self, w: _Waiting, why: str) -> None:
        self._drop(w)
        if self._report is None or self._closed:
            return
        now = time.monotonic()
        if now - self._reported < REPORT_SECONDS:
            self._unreported += 1
            return
        peer = f"{w.peer[0]}:{w.peer[1]}" if isinstance(w.peer, tuple) and len(w.peer) >= 2 else "a local process"
        more = f" ({self._unreported} more refused since the last report)" if self._unreported else ""
        self._reported, self._unreported = now, 0
        try:
            self._report(f"refused a connection from {peer}: {why}{more}")
        except Exception:  # noqa: BLE001 - a report must not stop the door
            pass

    def _forget(self, w: _Waiting) -> None:
        self._waiting.pop(w.sock.fileno(), None)
        try:
            self._selector.unregister(w.sock)
        except (KeyError, ValueError):
            pass

    def _drop(self, w: _Waiting) -> None:
        self._forget(w)
        w.sock.close()
