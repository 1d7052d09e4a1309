"""TLS for a cluster's TCP connections: the cluster CA and its certificates, contexts, and a connection.

A TLS cluster's node greets every TCP connection with ``BANNER`` (in clear, so a client without TLS
gets a clear error rather than silence), then speaks TLS 1.2+ with both ends' certificates checked
against the cluster's CA (mutual TLS: a client needs a certificate the CA signed too). The token
challenge still follows, inside TLS. Host names are not checked: the CA is the cluster's own, and
every certificate it signs is one of the cluster's (``anyray start --head --tls`` makes it, or the
user gives files).

Files (``TLSFiles``): the CA's certificate, this process's certificate and its key. Where a process
finds them: what its node daemon was given (``use``), else ``$ANYRAY_TLS_CA``/``$ANYRAY_TLS_CERT``/
``$ANYRAY_TLS_KEY``, else Ray's ``RAY_USE_TLS=1`` with ``RAY_TLS_CA_CERT``/``RAY_TLS_SERVER_CERT``/
``RAY_TLS_SERVER_KEY``, else (only when a node asks for TLS) the files of a TLS node running on this
machine (its record in the cluster directory).

``TLSConnection`` has the interface of ``multiprocessing.connection.Connection`` (the same frames),
over a TLS socket: one lock orders its TLS calls, which run on a non-blocking socket, so one thread
may read while another writes (OpenSSL's objects must not be used by two threads at once). A frame
is written whole by one thread and read whole by one, so after a frame is read no byte of the next
one waits inside OpenSSL: the socket's readiness (what ``epoll`` sees) stays true to what is there.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

BANNER = b"ANYRAY-TLS-1.0\r\n"  # 16 bytes a TLS node sends first, in clear
CA_DAYS = 3650
CERT_DAYS = 825
_SIZE = struct.Struct("!i")
_BIG = struct.Struct("!Q")
_COMBINE = 64 << 10  # a frame up to this size goes out in one write (header and body)


class TLSRequired(ConnectionError):
    """A node asked for TLS and this process has no cluster certificate, or the reverse."""


class TLSRefused(PermissionError):
    """A certificate was refused: the node's by this process's CA, or this process's by the node."""


@dataclass(frozen=True)
class TLSFiles:
    """The cluster CA's certificate, this process's certificate (signed by it) and the certificate's key."""

    ca: str
    cert: str
    key: str

    def as_dict(self) -> dict:
        return {"ca": self.ca, "cert": self.cert, "key": self.key}

    def check(self) -> TLSFiles:
        """Each file exists and the key is readable by its owner only; ValueError saying what is wrong."""
        for what, path in (("CA certificate", self.ca), ("certificate", self.cert), ("key", self.key)):
            if not os.path.isfile(path):
                raise ValueError(f"The TLS {what} file {path!r} does not exist.")
        mode = os.stat(self.key).st_mode & 0o077
        if mode:
            raise ValueError(f"The TLS key file {self.key} can be read by others (mode {oct(mode)}); "
                             f"run `chmod 600 {self.key}`.")
        return self


def _context(files: TLSFiles, server: bool) -> ssl.SSLContext:
    import ssl  # here, not at the top: a cluster without TLS never loads it (about 0.7 MiB and a few ms a process)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the CA is the cluster's own: any certificate it signed is a member's
    ctx.verify_mode = ssl.CERT_REQUIRED  # both ways: a client shows a certificate of the CA too
    try:
        ctx.load_verify_locations(cafile=files.ca)
        ctx.load_cert_chain(files.cert, files.key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Could not load the TLS files (CA {files.ca}, certificate {files.cert}, key "
                         f"{files.key}): {getattr(exc, 'reason', None) or exc.strerror or exc}.") from None
    if server:
        ctx.num_tickets = 0  # no session tickets: nothing arrives that is not a frame (see the module)
    return ctx


@lru_cache(maxsize=8)
def server_context(files: TLSFiles) -> ssl.SSLContext:
    return _context(files, server=True)


@lru_cache(maxsize=8)
def client_context(files: TLSFiles) -> ssl.SSLContext:
    return _context(files, server=False)


# -- which files this process uses ---------------------------------------------------------------

_used: TLSFiles | None = None


def use(files: TLSFiles | None) -> None:
    """This process (a node daemon) speaks TLS with ``files``, and refuses nodes that do not."""
    global _used
    _used = files


def from_env(environ=None) -> TLSFiles | None:
    """The files the environment names (anyray's spelling, then Ray's), None if it names none."""
    env = os.environ if environ is None else environ
    spellings = (("ANYRAY_TLS_CA", "ANYRAY_TLS_CERT", "ANYRAY_TLS_KEY"),
                 ("RAY_TLS_CA_CERT", "RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY"))
    names = spellings[0]
    if not any(env.get(n) for n in names):
        if env.get("RAY_USE_TLS", "").strip().lower() not in ("1", "true", "yes"):
            return None
        names = spellings[1]
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise ValueError(f"TLS needs a CA certificate, a certificate and its key: set {', '.join(missing)} too.")
    return TLSFiles(*(os.path.expanduser(env[n]) for n in names)).check()


def required() -> TLSFiles | None:
    """The files this process was told to use (its daemon's, or the environment's): a node without TLS
    is refused then."""
    return _used or from_env()


def client_files() -> TLSFiles | None:
    """The files to answer a node that asks for TLS with: those required, else a TLS node's of this machine."""
    files = required()
    if files is not None:
        return files
    from .files import local_nodes

    for record in local_nodes():
        if record.get("tls"):
            return TLSFiles(**record["tls"])
    return None


def metadata_url(url: str, files: TLSFiles | None) -> str:
    """A private metadata server's URL as this process connects to it: the TLS files it names (the head's)
    replaced by ``files`` (this node's own, on its machine)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if files is None or not parts.query:
        return url
    query = dict(parse_qsl(parts.query))
    names = {"ca": "ca", "cert": "cert", "key": "key", "ssl_ca_certs": "ca", "ssl_certfile": "cert",
             "ssl_keyfile": "key"}
    query.update({name: getattr(files, field) for name, field in names.items() if name in query})
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- connecting --------------------------------------------------------------------------------

def greeting(sock: socket.socket, timeout: float) -> bool:
    """Whether the node behind ``sock`` asks for TLS (its first bytes are ``BANNER``, then consumed);
    a plain node's challenge is left unread."""
    sock.settimeout(timeout)
    seen = b""
    while len(seen) < len(BANNER):
        seen = sock.recv(len(BANNER), socket.MSG_PEEK)
        if not seen or not BANNER.startswith(seen[:len(BANNER)]):
            break
        if len(seen) < len(BANNER):
            select.select([sock], [], [], timeout)  # the rest of the banner is on its way
    if seen[:len(BANNER)] != BANNER:
        return False
    sock.recv(len(BANNER))
    return True


def connect(sock: socket.socket, where: str, timeout: float):
    """The connection to the node behind ``sock`` (connected, nothing read): TLS when the node asks for
    it (``TLSConnection``), else None (the caller speaks in clear). ``TLSRequired`` when only one side
    has TLS; ``TLSRefused`` when the node's certificate is not the cluster CA's."""
    if not greeting(sock, timeout):
        if required() is not None:
            raise TLSRequired(f"The anyray node at {where} does not use TLS, and this process requires it (it "
                              f"was given TLS files). Start the cluster with `anyray start --head --tls` (or "
                              f"--tls-ca/--tls-cert/--tls-key), or leave TLS off here.")
        return None
    files = client_files()
    if files is None:
        raise TLSRequired(f"The anyray node at {where} requires TLS, and this process has no certificate of the "
                          f"cluster: set ANYRAY_TLS_CA, ANYRAY_TLS_CERT and ANYRAY_TLS_KEY (or Ray's RAY_USE_TLS=1 "
                          f"with RAY_TLS_CA_CERT, RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY), or pass "
                          f"--tls-ca/--tls-cert/--tls-key to `anyray start`.")
    tls_sock = client_context(files).wrap_socket(sock, server_side=False, do_handshake_on_connect=False)
    import ssl  # loaded by client_context

    try:
        tls_sock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        tls_sock.close()
        raise TLSRefused(f"The anyray node at {where} showed a certificate this process's cluster CA "
                              f"({files.ca}) did not sign ({exc.verify_message}).") from None
    except (ssl.SSLError, OSError) as exc:
        tls_sock.close()
        raise TLSRefused(f"The TLS handshake with the anyray node at {where} failed "
                              f"({getattr(exc, 'reason', None) or exc}): does it trust this process's "
                              f"certificate ({files.cert})?") from None
    tls_sock.settimeout(None)
    return TLSConnection(tls_sock, files)


class ServerTLS:
    """What a node's ``Gate`` needs to serve TLS: the banner, wrapping an accepted socket, the connection."""

    banner = BANNER

    def __init__(self, files: TLSFiles):
        self.files = files
        self._context = server_context(files)
        import ssl  # loaded by server_context

        self.want = (ssl.SSLWantReadError, ssl.SSLWantWriteError)  # a non-blocking step to try again when readable

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def connection(self, tls_sock: ssl.SSLSocket) -> TLSConnection:
        return TLSConnection(tls_sock, self.files)


def raw_socket(conn) -> socket.socket:
    """The blocking socket under ``conn`` for bulk transfers (its TLS socket, or a plain dup); ``conn``
    must not be used afterwards (a plain one is closed)."""
    if isinstance(conn, TLSConnection):
        return conn.release()
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    return sock


class TLSConnection:
    """``multiprocessing.connection.Connection``'s frames and methods over a TLS socket (see the module)."""

    def __init__(self, sock: ssl.SSLSocket, files: TLSFiles | None = None):
        import ssl  # loaded: ``sock`` is an SSLSocket

        self._wants = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
        sock.setblocking(False)
        self._sock, self.files = sock, files
        self._fd = sock.fileno()
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"TLSConnection(fd={self._fd}, {'closed' if self._closed else self._sock.version()})"

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        if self._closed:
            raise OSError("handle is closed")
        return self._fd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._sock.close()

    def release(self) -> ssl.SSLSocket:
        """The TLS socket itself, blocking; this connection is done."""
        self._closed = True
        self._sock.setblocking(True)
        return self._sock

    # -- one TLS call at a time, waiting for the socket outside the lock
    def _io(self, call, *args):
        want_read, want_write = self._wants
        while True:
            if self._closed:
                raise OSError("handle is closed")
            with self._lock:
                try:
                    return call(*args)
                except want_read:
                    want = select.POLLIN
                except want_write:
                    want = select.POLLOUT
            poller = select.poll()
            poller.register(self._fd, want)
            poller.poll()

    def _send_all(self, view: memoryview) -> None:
        while view:
            sent = self._io(self._sock.send, view)
            view = view[sent:]

    def _recv_into(self, view: memoryview) -> None:
        while view:
            got = self._io(self._sock.recv_into, view)
            if not got:
                raise EOFError
            view = view[got:]

    def send_bytes(self, buf, offset: int = 0, size: int | None = None) -> None:
        view = memoryview(buf)
        if view.itemsize > 1:
            view = view.cast("B")
        view = view[offset:] if size is None else view[offset:offset + size]
        n = len(view)
        header = _SIZE.pack(n) if n <= 0x7FFFFFFF else _SIZE.pack(-1) + _BIG.pack(n)
        if n <= _COMBINE:
            self._send_all(memoryview(header + bytes(view)))
        else:
            self._send_all(memoryview(header))
            self._send_all(view)

    def _size(self) -> int:
        head = bytearray(_SIZE.size)
        self._recv_into(memoryview(head))
        (n,) = _SIZE.unpack(head)
        if n == -1:
            big = bytearray(_BIG.size)
            self._recv_into(memoryview(big))
            (n,) = _BIG.unpack(big)
        return n

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        n = self._size()
        if maxlength is not None and n > maxlength:
            raise OSError("bad message length")
        buf = bytearray(n)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def recv_bytes_into(self, buf, offset: int = 0) -> int:
        n = self._size()
        view = memoryview(buf).cast("B")
        if len(view) - offset < n:
            raise ValueError("the buffer is too small for the message")
        self._recv_into(view[offset:offset + n])
        return n

    def poll(self, timeout: float | None = 0.0) -> bool:
        if self._closed:
            raise OSError("handle is closed")
        if self._sock.pending():
            return True
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(timeout, 0) * 1000))

    def send(self, obj) -> None:
        from multiprocessing.reduction import ForkingPickler

        self.send_bytes(ForkingPickler.dumps(obj))

    def recv(self):
        from multiprocessing.reduction import ForkingPickler

        return ForkingPickler.loads(self.recv_bytes())


# -- making a CA and certificates ------------------------------------------------------------

def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def _new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(directory: str) -> tuple[str, str]:
    """A new cluster CA in ``directory`` (0700): ``ca.crt`` and ``ca.key`` (0600); their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "anyray cluster CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    ca_key, ca_cert = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")
    _write(ca_key, _key_pem(key), 0o600)
    _write(ca_cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_cert, ca_key


def issue(ca_cert: str, ca_key: str, directory: str, name: str = "node", hosts=()) -> TLSFiles:
    """A certificate for a node or a driver signed by the CA, for use as server and as client, with
    ``hosts`` (addresses or names; 127.0.0.1 and localhost always) as its names: ``<name>.crt`` and
    ``<name>.key`` (0600) in ``directory``, with the CA's certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    with open(ca_cert, "rb") as f:
        ca = x509.load_pem_x509_certificate(f.read())
    with open(ca_key, "rb") as f:
        signer = serialization.load_pem_private_key(f.read(), None)
    names: list = []
    for host in ("127.0.0.1", "localhost", socket.gethostname(), *hosts):
        try:
            entry = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            entry = x509.DNSName(host)
        if entry not in names:
            names.append(entry)
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"anyray {name}")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(signer, hashes.SHA256()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    key_path, cert_path = os.path.join(directory, f"{name}.key"), os.path.join(directory, f"{name}.crt")
    _write(key_path, _key_pem(key), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return TLSFiles(ca_cert, cert_path, key_path)


def cluster_files(cluster_dir: str, hosts=()) -> TLSFiles:
    """``anyray start --head --tls``: the cluster's CA and the head's certificate in ``<cluster_dir>/tls``
    (made now, or the ones there reused while their CA stays), for this machine's nodes and drivers."""
    try:
        import cryptography  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError("Making the cluster's CA needs the cryptography package: pip install 'anyray[cluster]' "
                         "(or pass your own files: --tls-ca, --tls-cert, --tls-key).") from None
    directory = os.path.join(cluster_dir, "tls")
    ca_cert, ca_key = os.path.join(directory, "ca.crt"), os.path.join(directory, "ca.key")
    if not (os.path.isfile(ca_cert) and os.path.isfile(ca_key)):
        ca_cert, ca_key = make_ca(directory)
    return issue(ca_cert, ca_key, directory, "node", hosts)
