"""A small Redis client: RESP2 over TCP (TLS for ``rediss://``), what the Redis metadata store needs and no more.

Commands, Lua scripts by their SHA (sent whole once the server says it lacks one), and a subscriber's
connection. A node daemon opens its metadata store as it starts; this module loads in about a millisecond and
holds a few hundred KiB, where redis-py loads asyncio, its cluster client and every command's parser.

Failures: a connection that cannot be made or breaks raises the built-in ``ConnectionError`` (a timeout
``TimeoutError``); ``Client.call`` retries those with exponential backoff (50 ms doubling to 2 s, ``retries``
attempts) on a new connection, as a server that restarts is expected to come back. A refused password raises
``AuthenticationError`` at once; any other error reply ``ResponseError``. Passwords are never put in a message.

Thread-safety: a ``Client`` may be used from any thread (each call takes an idle connection, or makes one).
A ``Connection`` is one thread's at a time.
"""

from __future__ import annotations

import hashlib
import select
import socket
import threading
import time
from urllib.parse import unquote, urlsplit


class ResponseError(Exception):
    """The server answered with an error."""


class AuthenticationError(ResponseError):
    """The server refused the credentials (or asked for some that were not given)."""


def _encode(args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        elif not isinstance(arg, (bytes, bytearray, memoryview)):
            raise TypeError(f"a Redis argument must be bytes, str or int, not {type(arg).__name__}")
        out += [b"$%d\r\n" % len(arg), bytes(arg), b"\r\n"]
    return b"".join(out)


class Connection:
    """One connection, authenticated and on its database."""

    def __init__(self, address: dict, timeout: float = 5.0):
        host, port = address["host"], address["port"]
        # an ASCII host as bytes: getaddrinfo then needs no idna codec (whose import costs milliseconds)
        sock = socket.create_connection((host.encode() if host.isascii() else host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if address["tls"]:
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buf = bytearray()
        self._pos = 0
        try:
            if address["password"] is not None:
                self.command("AUTH", *([address["username"]] if address["username"] else []), address["password"])
            if address["db"]:
                self.command("SELECT", address["db"])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def send(self, *args) -> None:
        self._sock.sendall(_encode(args))

    def command(self, *args):
        """Send one command and read its reply; an error reply is raised."""
        self.send(*args)
        reply = self.read()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def wait_readable(self, timeout: float) -> bool:
        """True once a reply has begun to arrive (or the connection closed), False after ``timeout`` s."""
        if self._pos < len(self._buf):
            return True
        pending = getattr(self._sock, "pending", None)  # TLS: bytes already decrypted
        if pending is not None and pending():
            return True
        return bool(select.select([self._sock], [], [], timeout)[0])

    # -- replies --------------------------------------------------------------
    def _fill(self) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        data = self._sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the Redis server closed the connection")
        self._buf += data

    def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = bytes(self._buf[self._pos:end])
                self._pos = end + 2
                return line
            self._fill()

    def _exact(self, n: int) -> bytes:
        while len(self._buf) - self._pos < n + 2:
            self._fill()
        data = bytes(self._buf[self._pos:self._pos + n])
        self._pos += n + 2
        return data

    def read(self):
        """One reply: bytes, int, None, a list, or a ResponseError (returned, not raised)."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        if kind == b"-":
            text = rest.decode(errors="replace")
            if text.startswith(("WRONGPASS", "NOAUTH", "ERR invalid password", "ERR AUTH <password>",
                                "ERR Client sent AUTH, but no password is set")):
                return AuthenticationError(text)
            return ResponseError(text)
        raise ConnectionError(f"the Redis server sent a reply this client cannot read ({line[:20]!r})")


def parse_url(url: str) -> dict:
    """``redis://[[user]:password@]host[:port][/db]`` (``rediss://`` for TLS) as a connection's address."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("A Redis URL starts with redis:// or rediss://.")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parts.port or 6379
    except ValueError:
        raise ValueError("A Redis URL is redis://[:password@]host[:port][/db], with numbers for the port and "
                         "the database.") from None
    return {"host": parts.hostname or "localhost", "port": port, "db": db, "tls": parts.scheme == "rediss",
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None}


class Client:
    """Commands over a few reused connections, retried on a new one while the server is unreachable."""

    def __init__(self, url: str, retries: int = 8, timeout: float = 5.0):
        self.address = parse_url(url)
        self.retries, self.timeout = retries, timeout
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._scripts: dict[str, bytes] = {}  # script -> its SHA1, in hex

    def __repr__(self) -> str:
        return f"Client({self.address['host']}:{self.address['port']}/{self.address['db']})"

    def connect(self) -> Connection:
        return Connection(self.address, self.timeout)

    def call(self, *args):
        """Run one command and return its reply; retried as the module's docstring says."""
        delay = 0.05
        for attempt in range(self.retries):
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = self.connect()
                reply = conn.command(*args)
            except ResponseError:
                self._give_back(conn)
                raise
            except OSError:  # ConnectionError, TimeoutError, a refused connect
                if conn is not None:
                    conn.close()
                if attempt == self.retries - 1 or self._closed:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self._give_back(conn)
            return reply
        raise ConnectionError("the Redis server is unreachable")  # retries < 1

    def _give_back(self, conn: Connection | None) -> None:
        if conn is None:
            return
        with self._lock:
            if not self._closed and len(self._idle) < 4:
                self._idle.append(conn)
                return
        conn.close()

    def script(self, source: str, keys: list, args: list):
        """Run a Lua script by its SHA, sending it whole when the server does not hold it (yet, or again)."""
        sha = self._scripts.get(source)
        if sha is None:
            sha = self._scripts[source] = hashlib.sha1(source.encode()).hexdigest().encode()
        try:
            return self.call("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return self.call("EVAL", source, len(keys), *keys, *args)

    def scan(self, pattern: str, count: int = 1000) -> list[bytes]:
        keys, cursor = [], b"0"
        while True:
            cursor, found = self.call("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            keys += found
            if cursor == b"0":
                return keys

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
