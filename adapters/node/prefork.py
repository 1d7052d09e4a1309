"""A fork server forked, not started, by a process that has loaded ``anyray`` and nothing of the node yet.

A node daemon calls ``prefork()`` early, while it is still single-threaded and before it loads the node's side:
the child is a fork server (``forkserver``) that shares every page the daemon loaded so far (the ``anyray``
package) instead of loading them again in an interpreter of its own, and loads the worker's own modules while
the daemon loads the node's, on another core; the daemon, its fork server and every worker hold the common pages
once, and the first worker can be forked as soon as the node asks, without waiting for an interpreter to start.
The child waits on a pipe for the three lines an exec'd server reads on stdin (the session directory, the
socket's name, the secret); the node's pool takes it (``take``) instead of starting ``python -m
anyray.adapters.node.forkserver`` for its own interpreter. When the parent never hands it a session
(it failed to start, or it ended), the pipe closes and the child exits without doing anything.

``Prestarted`` stands for the child where the pool expects a ``subprocess.Popen``: ``pid``, ``stdin``,
``poll``, ``wait``, ``kill``, ``send_signal``, ``returncode``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

_taken_lock = threading.Lock()
_prestarted: Prestarted | None = None


class Prestarted:
    """The forked fork server, as the pool's ``ServerLink`` sees its process. One thread reaps it."""

    def __init__(self, pid: int, stdin):
        self.pid, self.stdin = pid, stdin
        self.args = [sys.executable, "(forked fork server)"]
        self.returncode: int | None = None
        self._done = threading.Event()
        self._reaper: threading.Thread | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Prestarted(pid={self.pid})"

    def _reap(self) -> None:
        try:
            _pid, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            self.returncode = self.returncode if self.returncode is not None else -signal.SIGKILL
        self._done.set()

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="anyray-forkserver-reaper", daemon=True)
                self._reaper.start()

    def poll(self) -> int | None:
        self._start_reaper()
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        self._start_reaper()
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if not self._done.is_set():  # unreaped, so the pid is still this child's
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


def prefork(close_fds: tuple[int, ...] = ()) -> Prestarted | None:
    """Fork a fork server now (see the module's docstring); None where it cannot be done safely: not Linux,
    or this process already runs other threads (a fork then may leave a lock held forever in the child).
    ``close_fds``: this process's descriptors the child must not hold (a pipe whose close someone awaits)."""
    global _prestarted
    if not sys.platform.startswith("linux") or threading.active_count() != 1 or _prestarted is not None:
        return None
    read, write = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(write)
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            code = _serve_when_told(read)
        except BaseException:  # noqa: BLE001 - the child must never return into the parent's code
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(read)
    _prestarted = Prestarted(pid, os.fdopen(write, "wb"))
    return _prestarted


def _serve_when_told(read: int) -> int:
    os.setsid()  # like a server started in a session of its own: a terminal's Ctrl-C does not reach it
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the workers must not hold the parent's stdin (a driver's lifeline)
    os.close(devnull)
    from . import forkserver  # the worker's side, loaded here while the parent goes on loading the node's

    with os.fdopen(read, "rb") as f:
        lines = f.read().decode().splitlines()
    if len(lines) < 3:
        return 0  # never handed a session: the parent failed to start, or ended
    return forkserver.run(lines[0].strip(), lines[1].strip(), bytes.fromhex(lines[2].strip()))


def take(python: str) -> Prestarted | None:
    """The forked fork server, once, if it runs ``python`` (this interpreter); else None."""
    global _prestarted
    with _taken_lock:
        server = _prestarted
        if server is None or os.path.abspath(python) != os.path.abspath(sys.executable):
            return None
        _prestarted = None
    if server.poll() is not None:
        return None
    return server
