"""A connection to a node daemon: the driver's (and ``anyray status``'s) end.

A client proves it knows the cluster token (HMAC challenges both ways, the
token itself never crosses the wire), says who it is, and gets the node's
setup: whether it can map the node's shared memory (same machine) and the
limits. From then on it speaks the protocol a node's workers speak
(``anyray.adapters.node.link``): the driver's runtime forwards every port
call to the node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import threading
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge

from ..node import framing
from ..node import messages as m
from ..node.arena import Arena
from ..node.link import Link
from . import tls
from .redaction import redact

log = logging.getLogger(__name__)

CLIENT_HELLO, CLIENT_SETUP, CLIENT_READY = m.CLIENT_HELLO, m.CLIENT_SETUP, m.CLIENT_READY  # see messages
HANDSHAKE_SECONDS = 10.0  # a peer that has not finished the handshake by then is dropped
MAP_SWITCH = "ANYRAY_MAP_NODE_MEMORY"  # "0": this process maps no node's shared memory, as one on another
# machine (its objects travel in its connection, its direct calls over TCP): that path, tried on one machine


def host_id() -> str:
    """Tells processes on one machine apart from those on another (boot id and hostname)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


def parse_address(address: str) -> tuple[str, int]:
    text = address.strip()
    for prefix in ("anyray://", "tcp://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"A node's address is host:port (what `anyray start` printed), got {redact(address)!r}.")
    return host.strip("[]") or "127.0.0.1", int(port)


def nodelay(conn) -> None:
    """No Nagle delay: a message's header and body are separate writes, each must go out at once."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    finally:
        sock.close()


class _Watchdog:
    """Breaks a connection whose handshake takes longer than ``HANDSHAKE_SECONDS``."""

    def __init__(self, conn):
        self._timer = threading.Timer(HANDSHAKE_SECONDS, framing.wake, (conn,))
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


def open_connection(address: str, token: bytes, timeout: float = 10.0, sock: socket.socket | None = None) -> Connection:
    """An authenticated connection to the node at ``address`` (over ``sock`` if given: a connection to it
    whose challenge is still unread); ``PermissionError`` if the token is refused."""
    host, port = parse_address(address)
    if sock is None:
        try:
            # an ASCII host as bytes: getaddrinfo then loads no idna codec
            sock = socket.create_connection((host.encode() if host.isascii() else host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectionError(f"No anyray node answers at {host}:{port} ({exc.strerror or exc}). Is the "
                                  f"cluster running (`anyray status`)?") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        conn = tls.connect(sock, f"{host}:{port}", timeout)  # TLS when the node asks for it
    except OSError as exc:
        sock.close()
        if isinstance(exc, (ConnectionError, PermissionError)):
            raise
        raise ConnectionError(f"The anyray node at {host}:{port} did not greet this process "
                              f"({exc.strerror or exc}).") from None
    if conn is None:
        sock.settimeout(None)
        conn = Connection(sock.detach())
    try:
        with _Watchdog(conn):
            answer_challenge(conn, token)
            deliver_challenge(conn, token)
    except AuthenticationError:
        conn.close()
        raise PermissionError(f"The anyray node at {host}:{port} refused the cluster token: this token is not "
                              f"the cluster's. Use the token file `anyray start --head` wrote.") from None
    except (EOFError, OSError) as exc:
        conn.close()
        if isinstance(conn, tls.TLSConnection) and isinstance(exc, OSError) and getattr(exc, "reason", None):
            raise tls.TLSRefused(f"The anyray node at {host}:{port} refused this process's TLS certificate "
                                  f"({exc.reason}): it is not signed by the cluster's CA.") from None
        raise PermissionError(f"The anyray node at {host}:{port} closed the connection during authentication: "
                              f"the cluster token does not match.") from None
    return conn


def handshake(conn: Connection, role: str, job_id: bytes = b"", namespace: str = "") -> dict:
    """Introduce this process; return the node's setup (``arena`` None when its memory is not mapped here)."""
    conn.send_bytes(framing.frame(CLIENT_HELLO, pickle.dumps(
        m.ClientHello(pid=os.getpid(), host=host_id(), role=role, job_id=job_id, namespace=namespace))))
    msg = conn.recv_bytes()
    if msg[0] != CLIENT_SETUP:
        raise ConnectionError(f"Unexpected first message from the node (tag {msg[0]}).")
    setup = pickle.loads(memoryview(msg)[1:])
    if "error" in setup:
        raise ConnectionError(setup["error"])
    shared = False
    if setup.get("arena") and os.environ.get(MAP_SWITCH, "1") != "0":
        try:
            Arena.attach(setup["arena"], writable=True).close()
            shared = True
        except OSError:
            pass
    if not shared:
        setup["arena"] = None
    conn.send_bytes(framing.frame(CLIENT_READY, pickle.dumps(shared)))
    return setup


class ClientLink(Link):
    """The driver's link: answers are read by the thread that waits for them; a node that goes away is
    a clear error. A Ctrl-C on the main thread is held while a message is half read, written or handled
    (and through a ``deferring()`` block), then raised: no message is cut or dropped."""

    def __init__(self, conn, setup: dict, address: str):
        super().__init__(conn, setup)
        self.address = address
        self._flusher = None
        self._in_io = False       # the main thread is inside one message's read and handling, or its write
        self._defer = 0           # inside deferring(): a Ctrl-C waits for its end
        self._held_sigint = None  # a Ctrl-C that came meanwhile
        self._previous_sigint = None
        self.handlers = {m.RESPONSE: self._on_response}  # what the node sends, by tag

    def start(self) -> None:
        """Send reference changes regularly even when nothing else goes out; install the Ctrl-C hold."""
        self._flusher = threading.Thread(target=self._flush_loop, name="anyray-client-flush", daemon=True)
        self._flusher.start()
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self._previous_sigint = previous
                signal.signal(signal.SIGINT, self._on_driver_sigint)

    def _on_driver_sigint(self, signum, frame) -> None:
        if self._in_io or self._defer:
            self._held_sigint = (signum, frame)
            return
        self._previous_sigint(signum, frame)

    def _raise_held(self) -> None:
        if self._held_sigint is not None and not self._in_io and not self._defer:
            held, self._held_sigint = self._held_sigint, None
            self._previous_sigint(*held)

    @contextlib.contextmanager
    def deferring(self):
        """A Ctrl-C during the block is raised at its end (the block's bookkeeping is never half done)."""
        on_main = threading.get_ident() == self.main_thread
        if on_main:
            self._defer += 1
        try:
            yield
        finally:
            if on_main:
                self._defer -= 1
                self._raise_held()

    def _recv(self) -> bytes:
        # On the main thread a Ctrl-C waits until the message is read and handled (_dispatch).
        on_main = threading.get_ident() == self.main_thread
        if on_main:
            self._in_io = True
        try:
            return self.conn.recv_bytes()
        except (EOFError, OSError):
            if on_main:
                self._in_io = False
            raise self._gone() from None

    def _dispatch(self, msg: bytes) -> None:
        try:
            handler = self.handlers.get(msg[0])
            if handler is not None:
                handler(memoryview(msg)[1:])
            else:
                log.warning("the node sent an unexpected message (tag %s)", msg[0])
        finally:
            if threading.get_ident() == self.main_thread:
                self._in_io = False
                self._raise_held()  # the answer is in its place: whoever waits for it finds it

    def _gone(self) -> ConnectionError:
        return ConnectionError(f"The connection to the anyray node at {self.address} closed: the node daemon "
                               f"stopped or died. Check `anyray status`.")

    def send(self, tag: int, body) -> None:
        on_main = threading.get_ident() == self.main_thread
        if on_main:
            self._in_io = True
        try:
            super().send(tag, body)
        except OSError:
            raise self._gone() from None
        finally:
            if on_main:
                self._in_io = False
                self._raise_held()

    def close(self) -> None:
        """Close the connection; on the main thread, give SIGINT back to the handler it had before."""
        if self._previous_sigint is not None and threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) == self._on_driver_sigint:
            signal.signal(signal.SIGINT, self._previous_sigint)
        try:
            self.conn.close()
        except OSError:
            pass
