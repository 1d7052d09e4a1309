"""A node's worker processes, on the node's side (the driver, or a node daemon): the pool.

The driver listens on a Unix socket inside the session directory (mode 0700). Every connection proves it knows
the session secret (the HMAC challenge of ``multiprocessing.connection``, both ways) before anything else is
read from it; a connection that fails is dropped and the pool goes on. The driver never forks: it starts the
fork server (``forkserver``, its end here is ``forkserver_link``) once, without waiting for it, and asks it
for workers; each forked worker connects back on its own.

The wire format is ``framing``'s, the messages ``messages``'. Workers never import this module: it is the only
one of the node that starts processes and waits on futures.

Threading on the driver. Each connection has one reader thread, which does the handshake, then reads that
connection until it closes and is the only thread that closes it. ``WorkerHandle.send`` may be called from any
thread (a lock orders whole messages). Callbacks (``on_message``, ``on_ready``, ``on_exit``) run on reader
threads: they must be quick and must not wait for another message from the same worker.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import select
import signal
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import AuthenticationError, Listener, answer_challenge, deliver_challenge

import cloudpickle

from anyray.exceptions import AnyrayError, WorkerCrashedError

from . import messages as m
from .forkserver_link import EXIT_REPORT_GRACE, ServerLink
from .framing import CALL_HEAD, REPLY_HEAD, SOCKET_NAME, frame, spin_until_readable, wake
from .messages import CALL, FORK, HELLO, KILL, REPLY, SERVER_HELLO, SHUTDOWN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerExit:
    """How a worker ended. ``returncode`` is Popen's (-N: killed by signal N), None when nobody saw it."""

    pid: int | None
    returncode: int | None
    reason: str


def describe(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _RemoteTraceback(Exception):
    def __str__(self) -> str:
        return self.args[0]


class WorkerHandle:
    """The driver's end of one worker. ``pid`` is None until the fork server or the worker reports it."""

    def __init__(self, pool: WorkerPool, worker_id: int, env: dict):
        self.worker_id = worker_id
        self.env = env
        self.pid: int | None = None
        self.exit: WorkerExit | None = None  # set once, when the worker is known dead
        self._pool = pool
        self._conn = None
        self._send_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._pending: list[bytes] = []  # sent before the worker connected
        self._ready = threading.Event()
        self._dead = threading.Event()
        self._calls: dict = {}  # request id -> concurrent.futures.Future
        self._ids = itertools.count(1)
        self._read_lock = threading.Lock()  # held by whichever thread reads the connection
        self._poller = None  # the reader thread's epoll, once connected
        self._reported: WorkerExit | None = None  # the fork server's exit report, while its messages are read
        self.adopted = False  # connected on its own (a driver), not forked by the pool
        self._server: ServerLink | None = None  # the fork server that forks it

    def __repr__(self) -> str:
        state = "dead" if self.exit else "ready" if self._ready.is_set() else "starting"
        return f"WorkerHandle(id={self.worker_id}, pid={self.pid}, {state})"

    @property
    def alive(self) -> bool:
        return self.exit is None

    @property
    def python(self) -> str | None:
        """The interpreter the worker runs in (as ``start_worker`` was given it, or the pool's own); None
        for a process the pool did not start."""
        return None if self._server is None else self._server.python

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the worker has connected; False on timeout or if it died first."""
        if self._ready.wait(timeout):
            return self.exit is None
        return False

    def send(self, tag: int, payload=b"") -> None:
        """Send one message; before the worker connects it is queued and sent on connect, in order.

        Raises WorkerCrashedError if the worker is dead. Thread-safe.
        """
        self.send_raw(frame(tag, payload))

    def call_async(self, fn: Callable, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` in the worker (the minimal protocol); the Future holds its value or error."""
        future: Future = Future()
        request = next(self._ids)
        self._calls[request] = future
        if self.exit is not None:  # died while we registered: _died may have swapped the table already
            self._calls.pop(request, None)
            future.set_exception(self._crashed())
            return future
        try:
            self.send_raw(CALL_HEAD.pack(CALL, request) + cloudpickle.dumps(m.Invoke.pack(fn, args, kwargs), 5))
        except BaseException:
            self._calls.pop(request, None)
            raise
        return future

    def call(self, fn: Callable, *args, **kwargs):
        return self.call_async(fn, *args, **kwargs).result()

    def send_raw(self, msg: bytes) -> None:
        """Send an already framed message (tag byte included); what ``send`` does without the copy."""
        with self._send_lock:
            conn = self._conn
            if conn is None:
                if self.exit is not None:
                    raise self._crashed()
                self._pending.append(msg)
                return
            try:
                conn.send_bytes(msg)
            except OSError as exc:
                raise self._crashed() from exc

    def read_until(self, done: Callable[[], bool]) -> bool:
        """Read and handle this worker's messages on the calling thread until ``done()``.

        A caller about to wait for something the worker will send saves the hand-off from the
        reader thread. Returns False at once, leaving the reading to whoever does it, when another
        thread reads this connection now; also when the connection closes or is not up yet.
        On the main thread a Ctrl-C arrives between messages, never in the middle of one.
        """
        conn, poller = self._conn, self._poller
        if conn is None or poller is None or not self._read_lock.acquire(False):
            return False
        try:
            try:
                poller.modify(conn.fileno(), 0)  # the reader thread sleeps through what this thread reads
            except (OSError, ValueError):
                return False  # closed under us
            try:
                fd = conn.fileno()
                while not done():
                    if self._conn is not conn:
                        return False
                    if not spin_until_readable(fd) and not _wait_readable(conn):
                        continue
                    with _DeferredInterrupt():
                        try:
                            msg = conn.recv_bytes()
                        except (EOFError, OSError):
                            return False
                        self._pool._handle_message(self, msg)
            finally:
                try:
                    poller.modify(conn.fileno(), select.EPOLLIN)
                except (OSError, ValueError):
                    pass
        finally:
            self._read_lock.release()
        return True

    def kill(self) -> None:
        """SIGKILL the worker (through the fork server, which knows whether the pid is still its child);
        a process the pool did not start (``adopt``) is only disconnected."""
        if self.exit is not None:
            return
        if self.adopted:
            with self._send_lock:
                if self._conn is not None:
                    wake(self._conn)
            return
        self._server.send(KILL, pickle.dumps(self.worker_id), quiet=True)

    # ---- called by the pool's threads

    def _crashed(self) -> WorkerCrashedError:
        how = f"{self.exit.reason}" if self.exit else "its connection broke"
        return WorkerCrashedError(f"Worker {self.worker_id} (pid {self.pid}) died: {how}.")

    def _attach(self, conn, pid: int) -> None:
        with self._send_lock:
            self.pid = self.pid or pid
            try:
                for msg in self._pending:
                    conn.send_bytes(msg)
            except OSError:
                pass  # the reader sees the close next
            self._pending.clear()
            self._conn = conn
        self._ready.set()

    def _detach(self, conn) -> None:
        with self._send_lock:
            self._conn = None
            conn.close()

    def _exit_reported(self, report: m.Exited) -> None:
        """The fork server saw the process end: its reader reads what it sent before (a generator's values) first."""
        with self._send_lock:
            conn = self._conn
            self._reported = exit = WorkerExit(report.pid, report.returncode, describe(report.returncode))
        if conn is None:
            return self._died(exit)
        timer = threading.Timer(1.0, lambda: self._conn is conn and wake(conn))  # in a second at most: a
        timer.daemon = True  # process the worker forked may hold the connection open
        timer.start()

    def _disconnected(self) -> None:
        """The connection closed: wait briefly for the exit report, then declare the worker dead anyway."""
        if self._reported is not None:
            self._died(self._reported)
            return
        if not self.adopted and not self._server.gone and not self._dead.wait(EXIT_REPORT_GRACE):
            self.kill()  # closed its connection but may still run
        self._died(WorkerExit(self.pid, None, "its connection to the driver closed"))

    def _died(self, exit: WorkerExit) -> None:
        with self._state_lock:
            if self.exit is not None:
                return
            self.exit = exit
        self._dead.set()
        self._ready.set()  # wake wait_ready
        with self._send_lock:  # the reader closes the connection under this lock, so the fd is still this one
            self._pending.clear()
            if self._conn is not None:
                wake(self._conn)
        calls, self._calls = self._calls, {}
        for future in calls.values():
            future.set_exception(self._crashed())
        self._pool._worker_died(self)


def read_results_here(refs, contains: Callable, worker_of: Callable) -> None:
    """The calling thread is about to wait for ``refs``: it reads their results off the connections
    of the workers making them (``worker_of(oid)``) itself, which saves a hand-off from the readers."""
    for ref in refs:
        if contains(ref):
            continue
        worker = worker_of(ref._id)
        if worker is None:
            return  # not running anywhere yet: wait for it the ordinary way
        worker.handle.read_until(functools.partial(contains, ref))


class WorkerPool:
    """Worker processes forked on demand by this session's fork server.

    Construction returns at once: the fork server starts in the background and
    ``start_worker`` calls made before it is up are queued. ``on_message(handle,
    tag, payload)`` receives every message but REPLY; ``on_ready(handle)`` runs
    when a worker connects; ``on_exit(handle)`` runs once per worker when it is
    known dead (``handle.exit`` says how). Callbacks run on reader threads and
    are not called after ``close`` began. The pool does not own the session:
    ``close`` stops every process and leaves the directory to the session.
    """

    def __init__(self, session, *, on_message: Callable | None = None, on_ready: Callable | None = None,
                 on_exit: Callable | None = None, python: str = sys.executable):
        self.address = session.file(SOCKET_NAME)
        self._secret = session.secret
        self._on_message, self._on_ready, self._on_exit = on_message, on_ready, on_exit
        self._workers: dict[int, WorkerHandle] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # the fork servers' table, the connections authenticating, closing
        self._closing = False
        self._conns: set = set()  # every open connection, to wake its reader at close
        self._servers: dict[int, ServerLink] = {}  # by the pid of its process
        self._by_python: dict[str, ServerLink] = {}  # the servers started for other interpreters, lazily
        self._session = session
        self._start_lock = threading.Lock()  # held while a fork server for another interpreter starts
        self._listener = Listener(self.address, family="AF_UNIX")  # authenticated per connection, off this thread
        self._server = self._start_server(session, python)
        self._acceptor = threading.Thread(target=self._accept_loop, name="anyray-accept", daemon=True)
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"WorkerPool({self.address!r}, workers={len(self._workers)})"

    @property
    def workers(self) -> list[WorkerHandle]:
        return list(self._workers.values())

    @property
    def server_pid(self) -> int | None:
        """The fork server's pid once it has connected."""
        return self._server.pid

    @property
    def _proc(self):
        return self._server.proc

    def wait_server(self, timeout: float | None = None) -> bool:
        """Wait until the fork server has connected (for measurements; nothing needs to wait for it)."""
        return self._server.ready.wait(timeout)

    def start_worker(self, env: dict[str, str] | None = None, python: str | None = None) -> WorkerHandle:
        """Ask for one more worker, with ``env`` applied to its environment; returns at once.

        ``python``: the interpreter the worker runs in (a virtual environment's, say), None for the pool's
        own. The first worker for an interpreter starts a fork server of its own for it (in the background,
        as the pool's first), which forks every later one; the pool stops them all at close."""
        env = dict(env or {})
        for key, value in env.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"Worker environment entries must be str to str; got {key!r}: {value!r}.")
        if self._closing:
            raise AnyrayError("This worker pool is closed; create a new one to start workers.")
        server = self._server if python is None else self._server_for(python)
        handle = WorkerHandle(self, next(self._ids), env)
        handle._server = server
        self._workers[handle.worker_id] = handle
        try:
            server.send(FORK, pickle.dumps(m.Fork.pack(handle.worker_id, env)))
        except AnyrayError:
            del self._workers[handle.worker_id]
            raise
        return handle

    def adopt(self, pid: int) -> WorkerHandle:
        """A handle for an authenticated connection of a process the pool did not start (a driver
        connected to a node daemon); ``serve(handle, conn)`` then reads it until it closes."""
        if self._closing:
            raise AnyrayError("This worker pool is closed.")
        handle = WorkerHandle(self, next(self._ids), {})
        handle.adopted = True
        handle.pid = pid
        self._workers[handle.worker_id] = handle
        return handle

    def serve(self, handle: WorkerHandle, conn) -> None:
        """Read an adopted connection on the calling thread until it closes; its end is reported as a
        worker's exit (``on_exit``)."""
        self._serve_worker(handle, conn, handle.pid)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the fork server and every worker, and wait for them (idempotent)."""
        with self._start_lock, self._lock:  # no fork server starts after this
            if self._closing:
                return
            self._closing = True
            servers = list(self._servers.values())
        for server in servers:
            server.refuse()
        try:  # wake the acceptor with a connection of our own, then stop listening
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(self.address)
        except OSError:
            pass
        self._acceptor.join(timeout)
        self._listener.close()
        for server in servers:
            server.shutdown(timeout)
        with self._lock:
            for conn in self._conns:  # still authenticating: a silent peer must not keep a thread
                wake(conn)
        for handle in self.workers:
            handle._died(WorkerExit(handle.pid, None, "the worker pool was closed"))

    # ---- internals

    def _server_for(self, python: str) -> ServerLink:
        """The fork server for ``python``, started now if this is its first worker."""
        if not isinstance(python, (str, os.PathLike)):
            raise TypeError(f"python must be the path of a Python interpreter (a str), not {python!r}.")
        key = os.path.abspath(os.fspath(python))
        if key == os.path.abspath(self._server.python):
            return self._server
        server = self._by_python.get(key)
        if server is not None and not server.gone:
            return server
        if not (os.path.isfile(key) and os.access(key, os.X_OK)):
            raise ValueError(f"No Python interpreter at {key!r} (not an executable file); pass the path of "
                             "the interpreter the worker should run in, such as a virtual environment's bin/python.")
        with self._start_lock:  # one server per interpreter, however many threads ask at once
            server = self._by_python.get(key)
            if server is None or server.gone:  # its first worker, or its server died: a new one
                if self._closing:
                    raise AnyrayError("This worker pool is closed; create a new one to start workers.")
                server = self._by_python[key] = self._start_server(self._session, key)
        return server

    def _start_server(self, session, python: str) -> ServerLink:
        """Start a fork server for ``python`` (without waiting for it); the caller does not hold ``_lock``."""
        return ServerLink(session, python, self._workers, _declare_dead, describe, self._register_server)

    def _register_server(self, server: ServerLink) -> None:
        with self._lock:
            self._servers[server.proc.pid] = server  # before it can connect: its hello names this pid

    def _worker_died(self, handle: WorkerHandle) -> None:
        self._workers.pop(handle.worker_id, None)
        if self._on_exit is not None and not self._closing:
            self._run_callback(self._on_exit, handle)

    @staticmethod
    def _run_callback(callback, *args) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("a worker pool callback failed")

    def _accept_loop(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                return
            if self._closing:
                conn.close()
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve_connection, args=(conn,), name="anyray-conn", daemon=True).start()

    def _serve_connection(self, conn) -> None:
        """Authenticate a connection, then read it until it closes (the connection's one reader thread)."""
        try:
            deliver_challenge(conn, self._secret)
            answer_challenge(conn, self._secret)
            msg = conn.recv_bytes(1 << 16)
        except (AuthenticationError, EOFError, OSError):
            msg = None  # refused (wrong secret, or gone); the pool goes on
        with self._lock:  # close() wakes the connections still in this phase, under this lock
            self._conns.discard(conn)
            if not msg:
                conn.close()
                return
        tag = msg[0]
        if tag == SERVER_HELLO:
            pid = pickle.loads(memoryview(msg)[1:])
            server = self._servers.get(pid)
            if server is not None:
                server.serve(conn, pid)
                return
            try:  # not one this pool started: told to stop (a bare close reads to it as the driver's death)
                conn.send_bytes(frame(SHUTDOWN))
            except OSError:
                pass
        if tag == HELLO and not self._closing:
            hello = m.WorkerHello._make(pickle.loads(memoryview(msg)[1:]))
            handle = self._workers.get(hello.worker_id)
            if handle is not None and handle._conn is None and handle.exit is None:
                self._serve_worker(handle, conn, hello.pid)
                return
        conn.close()

    def _serve_worker(self, handle: WorkerHandle, conn, pid: int) -> None:
        """Read the worker's messages until its connection closes, except while a waiting caller
        reads them itself (``WorkerHandle.read_until``): this thread then waits for it to finish."""
        handle._attach(conn, pid)
        if self._on_ready is not None:
            self._run_callback(self._on_ready, handle)
        poller = handle._poller = select.epoll()  # a caller that reads switches this thread's interest off
        poller.register(conn.fileno(), select.EPOLLIN)
        lock = handle._read_lock
        fd = conn.fileno()
        try:
            while True:
                if not spin_until_readable(fd):
                    poller.poll()
                if not lock.acquire(False):
                    lock.acquire()  # a caller began reading just now: look again once it is done
                    lock.release()
                    continue
                try:  # handled under the lock too: a caller that finds it free never waits for a message read here
                    if poller.poll(0):
                        self._handle_message(handle, conn.recv_bytes())
                finally:
                    lock.release()
        except (EOFError, OSError):
            pass
        finally:
            handle._detach(conn)
            poller.close()
        handle._disconnected()

    def _handle_message(self, handle: WorkerHandle, msg: bytes) -> None:
        if msg[0] == REPLY:
            _, request, status = REPLY_HEAD.unpack_from(msg)
            future = handle._calls.pop(request, None)
            if future is not None:
                _resolve(future, status, memoryview(msg)[REPLY_HEAD.size:])
        elif self._on_message is not None:
            self._run_callback(self._on_message, handle, msg[0], memoryview(msg)[1:])


def _declare_dead(handle: WorkerHandle, pid: int | None, reason: str) -> None:
    handle._died(WorkerExit(pid, None, reason))


def _wait_readable(conn) -> bool:
    """Whether ``conn`` has data (or is closed) within a second; a Ctrl-C raises here, before anything is read."""
    try:  # a second at a time: whatever the caller waits for may also come another way (a retry, a kill)
        return bool(select.select([conn.fileno()], [], [], 1.0)[0])
    except (OSError, ValueError):
        return True  # closed: the read that follows says so


class _DeferredInterrupt:
    """On the main thread, hold a Ctrl-C back while one message is read and handled, then raise it."""

    __slots__ = ("_old", "_caught")

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if callable(old):
                self._caught = None
                self._old = old
                signal.signal(signal.SIGINT, self._hold)
        return self

    def _hold(self, signum, frame):
        self._caught = (signum, frame)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            if self._caught is not None:
                self._old(*self._caught)  # the handler that was there, Python's default raises KeyboardInterrupt
        return False


def _resolve(future, status: int, body: memoryview) -> None:
    try:
        value = pickle.loads(body)
    except BaseException as exc:  # noqa: BLE001 - the caller gets whatever went wrong
        future.set_exception(exc)
        return
    if status == 0:
        future.set_result(value)
    else:
        exc, text = value
        exc.__cause__ = _RemoteTraceback(text)
        future.set_exception(exc)

