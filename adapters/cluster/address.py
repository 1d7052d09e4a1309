"""From the address a user gives to the node a driver (or a joining node) connects to, and the token.

The address may name a node or the cluster's metadata server, as Ray's do:

- ``"auto"``: the node started on this machine (``anyray start``), with this machine's token file;
- ``"HOST:PORT"`` (also ``"ray://HOST:PORT"``, Ray Client's form): whichever listens there. An
  anyray node speaks first (its token challenge); a silent server is asked ``PING`` (Redis answers
  ``+PONG`` or ``-NOAUTH``), then ``GET /version`` (etcd names itself);
- ``"redis://[:password@]HOST:PORT[/db]"``, ``"etcd://HOST:PORT"``: the metadata server.

Given the metadata server, the nodes are found in it (the records the nodes keep alive there), and
the node of this machine, else the head, else any is chosen.

The cluster token comes from ``token_file`` when given; else it is derived from the cluster's Redis
password (``anyray start --head --redis-password P`` makes the token ``HMAC(P, label)``, so a
machine that knows P needs no token file, and P itself never crosses the wire), else it is this
machine's token file (or ``$ANYRAY_CLUSTER_TOKEN``). The head records ``HMAC(token, label)`` in the
metadata store, so a driver that reads the store knows which of its candidates is the cluster's.

Passwords never appear in what this module says: every URL in a message goes through ``redact``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from . import files
from .redaction import redact
from .tls import BANNER, TLSRefused

RAY_CLIENT_PORT = 10001  # Ray Client's port (``ray://HOST:10001``); the head listens there too when it is free
TOKEN_LABEL = b"anyray cluster token from the Redis password v1"
CHECK_LABEL = b"anyray cluster token check v1"
TOKEN_CHECK_KEY = "cluster/token_check"
NODES = "nodes/"
CONNECT_SECONDS = 10.0  # to open a TCP connection to whatever the address names
SPEAKS_FIRST_SECONDS = 0.5  # how long a node may take to send its challenge before the probe asks the server
METADATA_SCHEMES = ("redis", "rediss", "etcd")

def token_from_password(password: str) -> bytes:
    """The cluster token of a cluster whose head was started with ``--redis-password password``."""
    return hmac.new(password.encode(), TOKEN_LABEL, hashlib.sha256).hexdigest().encode()


def token_check(token: bytes) -> str:
    """What the head records in the metadata store so that a driver can tell which token is the cluster's."""
    return hmac.new(token, CHECK_LABEL, hashlib.sha256).hexdigest()


@dataclass
class Target:
    """Where to connect: a node's ``HOST:PORT`` (``node``), or the nodes found in the metadata store."""

    nodes: list[str]                        # node addresses to try, best first
    metadata: str | None = None             # the metadata server's URL (with its password) when it was given
    tokens: list[tuple[str, bytes]] = field(default_factory=list)  # (where from, token), best first
    sock: socket.socket | None = None       # a probe's connection to ``nodes[0]``, its challenge unread
    shown: str = ""                         # the address as it may be shown


def split_host_port(text: str, original: str) -> tuple[str, int]:
    if "@" in text:  # user:password@HOST:PORT: a node takes no credentials, and they are not echoed back
        raise ValueError(f"A node's address is HOST:PORT, without a user or password (got one before "
                         f"{text.rpartition('@')[2].strip()!r}): pass the cluster's Redis password as "
                         f"init(address=..., _redis_password=...) or `--redis-password`, or name the Redis "
                         f"server as redis://:PASSWORD@HOST:PORT.")
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        raise ValueError(f"A cluster address is 'auto', HOST:PORT (a node's, or the Redis or etcd server's), "
                         f"ray://HOST:PORT, redis://HOST:PORT or etcd://HOST:PORT; got {redact(original)!r}.")
    return host, int(port)


def metadata_url(url: str, password: str | None = None) -> str:
    """``url`` checked (scheme, host, port) and with ``password`` added where it has none; ValueError if bad."""
    if url.partition("://")[0].lower() == "etcd" and "," in url:  # the members of one etcd cluster
        from ..metadata.etcd import parse_url

        parse_url(url)
        return url
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    scheme = parts.scheme.lower() if parts else ""
    if scheme not in METADATA_SCHEMES or not parts.hostname or port is None:
        raise ValueError(f"A metadata server's URL is redis://HOST:PORT (its password, if any, as "
                         f"redis://:PASSWORD@HOST:PORT) or etcd://HOST:PORT; got {redact(url)!r}.")
    if password and scheme != "etcd" and not parts.password:
        host = parts.netloc.rpartition("@")[2]
        user = quote(parts.username or "", safe="")
        url = f"{scheme}://{user}:{quote(password, safe='')}@{host}{parts.path}"
    return url


def url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def candidate_tokens(password: str | None, token_file: str | None) -> list[tuple[str, bytes]]:
    """The tokens to try, best first: ``token_file`` alone when given; else the one derived from the
    password, then this machine's (``$ANYRAY_CLUSTER_TOKEN`` or its token file)."""
    if token_file:
        return [(f"the token file {token_file}", files.read_token(token_file))]
    found = []
    if password:
        found.append(("the token derived from the Redis password", token_from_password(password)))
    try:
        found.append(("this machine's cluster token", files.read_token()))
    except FileNotFoundError:
        if not found:
            raise
    return found


def resolve(address: str, *, password: str | None = None, token_file: str | None = None) -> Target:
    """What ``address`` names, and the tokens to try (see the module's docstring). Errors say what was
    wrong, never a password; an address where nothing listens fails within seconds."""
    if not isinstance(address, str) or not address.strip():
        raise ValueError(f"A cluster address is a string ('auto', HOST:PORT, ...); got {address!r}.")
    text = address.strip()
    if text == "auto":
        return Target([files.auto_address()], tokens=candidate_tokens(password, token_file), shown="auto")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower() if sep else ""
    if scheme in METADATA_SCHEMES:
        url = metadata_url(text, password)
        return _from_metadata(url, password or url_password(url), token_file)
    if scheme in ("", "ray", "anyray", "tcp"):
        host, port = split_host_port(rest if sep else text, address)
        kind, sock = probe(host, port)
        if kind == "node":
            return Target([f"{host}:{port}"], tokens=candidate_tokens(password, token_file), sock=sock,
                          shown=f"{host}:{port}")
        if kind == "redis-noauth" and not password:
            raise PermissionError(
                f"{host}:{port} is a Redis server that wants a password: pass the cluster's Redis password "
                f"(init(address=..., _redis_password=...), or `--redis-password` on the command line).")
        url = f"redis://{host}:{port}/0" if kind.startswith("redis") else f"etcd://{host}:{port}"
        return _from_metadata(metadata_url(url, password), password, token_file)
    raise ValueError(f"Unknown cluster address scheme {scheme + '://'!r} in {redact(address)!r}: use 'auto', "
                     f"HOST:PORT, ray://HOST:PORT, redis://HOST:PORT or etcd://HOST:PORT.")


def probe(host: str, port: int) -> tuple[str, socket.socket | None]:
    """What listens at ``host:port``: ``"node"`` (with the open connection, its challenge unread, or None),
    ``"redis"``, ``"redis-noauth"`` (wants a password) or ``"etcd"``."""
    sock = _connect(host, port)
    try:
        seen = _peek(sock, SPEAKS_FIRST_SECONDS)
        if seen and (b"#CHALLENGE#" in seen or seen.startswith(BANNER)):  # a node, plain or TLS
            sock.settimeout(None)
            kept, sock = sock, None
            return "node", kept
        if seen is not None:  # it spoke first, or closed at once: not ours, and no Redis or etcd either
            raise ConnectionError(f"What listens at {host}:{port} is no anyray node, Redis or etcd server "
                                  f"(it {'closed the connection' if seen == b'' else 'spoke first'}). "
                                  f"Check the address.")
        sock.settimeout(CONNECT_SECONDS)
        sock.sendall(b"PING\r\n")
        reply = _read_some(sock)
    finally:
        if sock is not None:
            sock.close()
    if b"#CHALLENGE#" in reply or reply.startswith(BANNER):  # a node that was slow to speak: connect afresh
        return "node", None
    if reply.startswith(b"+PONG"):
        return "redis", None
    if reply.startswith((b"-NOAUTH", b"-AUTH", b"-ERR AUTH")) or b"Authentication required" in reply:
        return "redis-noauth", None
    if reply.startswith((b"-", b"+")):
        return "redis", None
    sock = _connect(host, port)
    try:
        sock.settimeout(CONNECT_SECONDS)
        sock.sendall(b"GET /version HTTP/1.0\r\n\r\n")
        answer = _read_some(sock, 4096)
    finally:
        sock.close()
    if b"etcdserver" in answer:
        return "etcd", None
    raise ConnectionError(f"What listens at {host}:{port} is no anyray node, Redis or etcd server. Check the "
                          f"address: a node's HOST:PORT is printed by `anyray start`.")


def _connect(host: str, port: int) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=CONNECT_SECONDS)
    except OSError as exc:
        raise ConnectionError(f"Nothing answers at {host}:{port} ({exc.strerror or exc}): no anyray node, Redis "
                              f"or etcd server listens there. Is the cluster running (`anyray status`), and is "
                              f"the address right?") from None


def _peek(sock: socket.socket, seconds: float) -> bytes | None:
    """The first bytes the server sent without being asked (not consumed), b"" if it closed, None if silent."""
    deadline = time.monotonic() + seconds
    seen = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return seen
        sock.settimeout(left)
        try:
            seen = sock.recv(64, socket.MSG_PEEK)
        except TimeoutError:
            return seen
        except OSError:
            return b""
        if not seen or len(seen) >= 15:  # 4 bytes of length and b"#CHALLENGE#"
            return seen


def _read_some(sock: socket.socket, size: int = 256) -> bytes:
    try:
        return sock.recv(size)
    except OSError:
        return b""


def _from_metadata(url: str, password: str | None, token_file: str | None) -> Target:
    """The nodes the metadata server at ``url`` lists (this machine's first, then the head) and the token."""
    from ..metadata import open_metadata

    if url.partition("://")[0].lower() == "etcd" and "," in url:
        from ..metadata.etcd import parse_url

        members = parse_url(url)[0]
    else:
        parts = urlsplit(url)
        members = [(parts.hostname, parts.port)]
    for i, (host, port) in enumerate(members):  # a fast, clear error when nothing listens (the stores retry)
        try:
            _connect(host, port).close()
            break
        except ConnectionError:
            if i == len(members) - 1:
                raise
    shown = redact(url)
    try:
        store = open_metadata(url)
    except (ConnectionError, PermissionError, ValueError, OSError) as exc:
        raise ConnectionError(f"Could not open the metadata server {shown}: {redact(exc)}") from None
    try:
        records = []
        for _key, value in store.scan(NODES):
            try:
                records.append(json.loads(value))
            except ValueError:
                continue
        check = store.get(TOKEN_CHECK_KEY)
    except Exception as exc:  # noqa: BLE001 - the store's own errors, said without the URL's password
        raise ConnectionError(f"Could not read the metadata server {shown}: {type(exc).__name__}: "
                              f"{redact(exc)}") from None
    finally:
        store.close()
    if not records:
        raise ConnectionError(f"The metadata server {shown} lists no anyray node: start the cluster's head "
                              f"(`anyray start --head`) first.")
    here = socket.gethostname()
    records.sort(key=lambda r: (r.get("host") != here, not r.get("head")))
    tokens = candidate_tokens(password, token_file)
    if check is not None:
        matching = [t for t in tokens if hmac.compare_digest(token_check(t[1]).encode(), check)]
        if not matching:
            tried = ", ".join(where for where, _ in tokens)
            raise PermissionError(
                f"The cluster whose metadata server is {shown} has another token than {tried}. Pass the password "
                f"its head was started with (`--redis-password`), or copy the token file its head wrote "
                f"(token_file= / --token-file).")
        tokens = matching
    return Target([r["address"] for r in records if r.get("address")], metadata=url, tokens=tokens, shown=shown)


def connect(target: Target, role: str, job_id: bytes = b"", namespace: str = ""):
    """An authenticated, introduced connection to a node of ``target``: ``(conn, setup, address, token)``."""
    from .client import handshake, open_connection

    refused: list[str] = []  # nodes that refused every token
    gone: Exception | None = None
    sock, target.sock = target.sock, None
    for address in target.nodes:
        for _where, token in target.tokens:
            try:
                conn = open_connection(address, token, sock=sock)
            except TLSRefused:  # a certificate, not the token: another token would not help
                if sock is not None:
                    sock.close()
                raise
            except PermissionError:
                sock = None
                continue
            except ConnectionError as exc:  # this node is gone: try the next one
                sock, gone = None, exc
                break
            sock = None
            try:
                setup = handshake(conn, role, job_id, namespace)
            except BaseException:
                conn.close()
                raise
            return conn, setup, address, token
        else:
            refused.append(address)
    if sock is not None:
        sock.close()
    if refused:
        tried = " and ".join(where for where, _ in target.tokens)
        raise PermissionError(f"The anyray node at {refused[-1]} refused {tried}: pass the password the cluster's "
                              f"head was started with (--redis-password, init(..., _redis_password=...)), or a copy "
                              f"of the token file it wrote (--token-file, init(..., token_file=...)).")
    if gone is not None:
        raise gone
    raise ConnectionError(f"No anyray node to connect to at {target.shown}.")
