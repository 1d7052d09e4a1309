"""The fork server: ``python -m anyray.adapters.node.forkserver``, started once per session by the driver.

It reads three lines on stdin (the session directory, the socket's name in
it, the session secret in hex; never argv or the environment, which other
users can read), connects to the driver's listener with the secret, and
then, on one thread, forks workers on request. It has imported anyray and
cloudpickle (not numpy, whose import starts a thread) and frozen its heap,
so a fork costs a few milliseconds and a worker shares those pages.

It stays single-threaded: a fork from a process with other threads can
leave a lock held forever in the child. It reaps its children on SIGCHLD and
reports each exit to the driver. When the driver's connection closes without
SHUTDOWN (the driver died, however), it SIGKILLs every worker, removes the
session directory and exits; workers also die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import select
import shutil
import signal
import sys
import time
import traceback
from multiprocessing.connection import Client

import cloudpickle  # noqa: F401 - preloaded: every worker needs it

import anyray  # noqa: F401
import anyray.executor  # noqa: F401
import anyray.serialization  # noqa: F401
from anyray.adapters.node import framing, worker_loop, worker_main  # noqa: F401 - what every new process runs
from anyray.adapters.node import messages as m
from anyray.adapters.node.session import PREFIX

PR_SET_PDEATHSIG = 1
LOCK_TRIES = 100  # 5 s for the dead driver's lock to drop; a live owner keeps its directory


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


class ForkServer:
    def __init__(self, conn, session_path: str, address: str, secret: bytes):
        self.conn = conn
        self.session_path = session_path
        self.address = address
        self._secret = secret
        self.pid = os.getpid()
        self.children: dict[int, int] = {}  # pid -> worker id, until reaped
        self._prctl = _load_prctl()
        self._wake_r, self._wake_w = os.pipe()
        self.handlers = {m.FORK: self._on_fork, m.KILL: self._on_kill, m.SHUTDOWN: self._on_shutdown}  # by tag

    def send(self, tag: int, msg: tuple) -> None:
        try:
            self.conn.send_bytes(framing.frame(tag, pickle.dumps(msg)))
        except OSError:
            pass  # the driver is gone; the loop sees the close next

    def serve(self) -> int:
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the wakeup fd is written
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's connection decides when this ends
        gc.freeze()  # what is here now stays out of the collector, so its pages stay shared with the workers
        self.conn.send_bytes(framing.frame(m.SERVER_HELLO, pickle.dumps(self.pid)))
        conn_fd = self.conn.fileno()
        while True:
            ready, _, _ = select.select([conn_fd, self._wake_r], [], [])
            if self._wake_r in ready:
                try:
                    while os.read(self._wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                self._reap()
            if conn_fd not in ready:
                continue
            try:
                msg = self.conn.recv_bytes()
            except (EOFError, OSError):
                self._kill_all()
                self._remove_session()
                return 0
            handler = self.handlers.get(msg[0])
            if handler is not None and handler(pickle.loads(memoryview(msg)[1:]) if len(msg) > 1 else None):
                return 0

    def _on_fork(self, body) -> None:
        self._fork(m.Fork._make(body))

    def _on_kill(self, worker_id: int) -> None:
        for pid, child in self.children.items():
            if child == worker_id:
                os.kill(pid, signal.SIGKILL)  # still unreaped, so the pid is still this child

    def _on_shutdown(self, _) -> bool:
        """Kill and reap every worker; True: the server then exits."""
        self._kill_all()
        return True

    def _fork(self, order: m.Fork) -> None:
        worker_id, env = order.worker_id, order.env
        try:
            pid = os.fork()
        except OSError as exc:
            self.send(m.FORK_FAILED, m.ForkFailed.pack(worker_id, str(exc)))
            return
        if pid == 0:
            code = 1
            try:
                code = self._child(worker_id, env)
            except BaseException:  # noqa: BLE001 - the child must never return into the server's loop
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.children[pid] = worker_id
        self.send(m.FORKED, m.Forked.pack(worker_id, pid))

    def _child(self, worker_id: int, env: dict) -> int:
        if self._prctl is not None:
            self._prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != self.pid:
                return 1  # the server died between the fork and the prctl
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # A cancel's SIGINT may come while the worker still starts: ignored until the worker installs the
        # handler that reads the cancel (it then reads a CANCEL that came before as its task starts).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.conn.close()
        os.environ.update(env)
        return worker_loop.worker_main(self.address, self._secret, worker_id)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.children.pop(pid, None)
            if worker_id is not None:
                self.send(m.EXITED, m.Exited.pack(worker_id, pid, os.waitstatus_to_exitcode(status)))

    def _kill_all(self) -> None:
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.children):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()

    def _remove_session(self) -> None:
        """Remove the session directory once its owner's lock is free (the owner is dead), as the sweep would."""
        if not os.path.basename(self.session_path).startswith(PREFIX):
            return  # never remove what is not a session
        try:
            fd = os.open(os.path.join(self.session_path, "lock"), os.O_RDWR)
        except OSError:
            return  # removed already
        try:
            for _ in range(LOCK_TRIES):  # the dying driver's files close in no promised order
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    time.sleep(0.05)
                    continue
                shutil.rmtree(self.session_path, ignore_errors=True)
                return
        finally:
            os.close(fd)


def main() -> int:
    session_path = sys.stdin.readline().strip()
    name = sys.stdin.readline().strip()
    secret = bytes.fromhex(sys.stdin.readline().strip())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the workers must not inherit the pipe the secret came through
    os.close(devnull)
    return run(session_path, name, secret)


def run(session_path: str, name: str, secret: bytes) -> int:
    """Connect to the pool's listener (``name`` in ``session_path``) with ``secret`` and serve it."""
    if not session_path or not secret:
        return 2
    address = os.path.join(session_path, name)
    try:
        conn = Client(address, family="AF_UNIX", authkey=secret)
    except Exception:  # noqa: BLE001 - refused or gone, however
        return 1  # the driver closed the pool, or died, before we came up: nothing was started
    return ForkServer(conn, session_path, address, secret).serve()


if __name__ == "__main__":
    sys.exit(main())
