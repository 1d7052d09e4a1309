"""The pool's end of one fork server (``forkserver``): starting it, its connection, and what it reports.

The pool starts a fork server with ``python -m anyray.adapters.node.forkserver`` and writes it the session
directory, the socket's name and the session secret on stdin (never argv or the environment, which other
users can read). The server connects to the pool's listener like a worker (the same HMAC handshake), says
SERVER_HELLO with its pid, and from then on forks workers on request and reports each fork and exit. Orders
sent before it connected are queued and sent, in order, when it does.

A pool may run several fork servers, one per Python interpreter its workers start from; each is a
``ServerLink``. The worker handles are the pool's; a link finds them by worker id in the pool's table.
"""

from __future__ import annotations

import pickle
import subprocess
import threading
from collections.abc import Callable

from anyray.exceptions import AnyrayError

from . import messages as m
from . import prefork
from .framing import SOCKET_NAME, frame
from .messages import EXITED, FORK_FAILED, FORKED, SHUTDOWN

EXIT_REPORT_GRACE = 2.0  # seconds a closed worker connection waits for the fork server's exit report


class ServerLink:
    """One fork server process and the pool's connection to it.

    ``workers`` is the pool's table (worker id -> handle); ``died(handle, pid, reason)`` declares a handle
    dead (the pool's ``WorkerExit`` with that pid and reason); ``register(link)`` is called once the process
    exists, before it is told how to connect. The server's hello names it by pid: the interpreter must run
    the server in the process started (a virtual environment's python does; a wrapper that forks would not).
    Thread-safe: ``send`` from any thread, ``serve`` on the connection's reader thread, ``shutdown`` once, at
    the pool's close.
    """

    def __init__(self, session, python: str, workers: dict, died: Callable, describe: Callable,
                 register: Callable):
        self.python = python
        self.pid: int | None = None  # as the server reports it (SERVER_HELLO)
        self.ready = threading.Event()
        self.gone = False  # its connection closed: it exited, or is about to
        self._workers = workers
        self._died = died
        self._describe = describe
        self._lock = threading.Lock()  # the connection and the queue
        self._conn = None
        self._pending: list[bytes] = []
        self._closing = False
        # the server this process forked early, where it did (a node daemon: ``prefork``), else a new one
        self.proc = prefork.take(python) or subprocess.Popen(
            [python, "-m", "anyray.adapters.node.forkserver"], stdin=subprocess.PIPE, close_fds=True,
            start_new_session=True)
        register(self)  # known by its pid before it can connect (it waits for the lines below)
        try:  # a pipe write this small never blocks; the secret never goes in argv or the environment
            self.proc.stdin.write(f"{session.path}\n{SOCKET_NAME}\n{session.secret.hex()}\n".encode())
            self.proc.stdin.close()
        except OSError:
            pass  # it died already: its connection never comes, and the watcher below sees its exit
        threading.Thread(target=self._watch, name="anyray-forkserver-watch", daemon=True).start()

    def __repr__(self) -> str:
        return f"ServerLink({self.python!r}, pid={self.proc.pid})"

    def send(self, tag: int, payload: bytes, quiet: bool = False) -> None:
        """Send one order, queued until the server connects. Raises AnyrayError (unless ``quiet``) when
        the server is gone."""
        msg = frame(tag, payload)
        with self._lock:
            if self._conn is None:
                if self.gone or self._closing:
                    if quiet:
                        return
                    raise AnyrayError(f"The fork server for {self.python} exited "
                                      f"({self._describe(self.proc.poll())}); no more workers can be started "
                                      "from it.")
                self._pending.append(msg)
                return
            try:
                self._conn.send_bytes(msg)
            except OSError as exc:
                if not quiet:
                    raise AnyrayError("The fork server's connection broke; no more workers can be started.") from exc

    def serve(self, conn, pid: int) -> None:
        """Read the server's reports on its connection until it closes (the connection's reader thread)."""
        with self._lock:
            if self._conn is not None or self._closing:
                try:  # a bare close would read to it as the driver's death, and it would remove the session
                    conn.send_bytes(frame(SHUTDOWN))
                except OSError:
                    pass
                conn.close()
                return
            self.pid = pid
            try:
                for msg in self._pending:
                    conn.send_bytes(msg)
            except OSError:
                pass
            self._pending.clear()
            self._conn = conn
        self.ready.set()
        try:
            while True:
                msg = conn.recv_bytes()
                entry = SERVER_REPORTS.get(msg[0])
                if entry is None:
                    continue
                kind, handler = entry
                report = kind._make(pickle.loads(memoryview(msg)[1:]))
                handle = self._workers.get(report.worker_id)
                if handle is not None:
                    handler(self, handle, report)
        except (EOFError, OSError):
            pass
        with self._lock:
            self._conn = None
            self.gone = True
            conn.close()
        try:
            self.proc.wait(EXIT_REPORT_GRACE)  # reap it; shutdown waits too
        except subprocess.TimeoutExpired:
            pass
        for handle in list(self._workers.values()):  # those that never connected; connected ones see their
            if handle._server is self and handle._conn is None:  # connection close
                self._died(handle, handle.pid, "the fork server exited before it connected")

    def _watch(self) -> None:
        """A server that exits before it connects (an interpreter that cannot import anyray, say) fails
        the workers asked of it, instead of leaving them waiting for a connection that never comes."""
        returncode = self.proc.wait()
        with self._lock:
            if self._conn is not None or self.gone or self._closing:
                return  # it connected (its connection's close settles the rest), or the pool closes
            self.gone = True
        reason = (f"the fork server for {self.python} exited before it connected "
                  f"({self._describe(returncode)}; its error output, if any, went to the driver's stderr)")
        for handle in list(self._workers.values()):
            if handle._server is self and handle._conn is None:
                self._died(handle, handle.pid, reason)

    def refuse(self) -> None:
        """The pool closes: a connection from the server that comes now is told to shut down."""
        with self._lock:
            self._closing = True

    def shutdown(self, timeout: float) -> None:
        """Stop the server (it kills and reaps its workers) and wait for it; kill it if it does not go."""
        with self._lock:
            self._closing = True
            conn = self._conn
            sent = False
            if conn is not None:
                try:
                    conn.send_bytes(frame(SHUTDOWN))
                    sent = True
                except OSError:
                    pass
        if not sent:
            self.proc.kill()  # workers it may have forked die with it (PR_SET_PDEATHSIG)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _forked(link: ServerLink, handle, report: m.Forked) -> None:
    handle.pid = handle.pid or report.pid


def _fork_failed(link: ServerLink, handle, report: m.ForkFailed) -> None:
    link._died(handle, None, f"the fork server could not fork it: {report.message}")


def _exited(link: ServerLink, handle, report: m.Exited) -> None:
    handle._exit_reported(report)


# What the fork server reports about a worker: tag -> (its type, what the pool does with it).
SERVER_REPORTS = {FORKED: (m.Forked, _forked), EXITED: (m.Exited, _exited),
                  FORK_FAILED: (m.ForkFailed, _fork_failed)}
