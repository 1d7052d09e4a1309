"""A node session's directory in shared memory, and the removal of those a dead driver left.

Everything a session puts on disk (its lock, its sockets, its shared-memory
arena) lives in one directory, ``/dev/shm/anyray-<pid>-<random>`` (mode
0700), so one removal clears it all. The owning process holds an exclusive
``flock`` on the directory's ``lock`` file for its whole life; the kernel
drops it when the process dies, however it dies. A later session that can
take the lock of another session's directory knows its owner is gone and
removes it (a reused pid cannot fool a lock).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil

PREFIX = "anyray-"


def shm_root() -> str:
    """Where sessions live: ``/dev/shm`` when it exists (memory-backed), else the temp dir."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return "/dev/shm"
    import tempfile

    return tempfile.gettempdir()


class Session:
    """The directory, lock and secret of one node session. ``close`` removes the directory."""

    def __init__(self, root: str | None = None):
        self.root = root or shm_root()
        remove_stale_sessions(self.root)
        self.path = os.path.join(self.root, f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        os.mkdir(self.path, 0o700)
        self._lock_fd = os.open(os.path.join(self.path, "lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.secret = secrets.token_bytes(32)  # authenticates every connection of this session; never logged

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def __repr__(self) -> str:  # the secret stays out of reprs, logs and tracebacks
        return f"Session({self.path!r})"

    def close(self) -> None:
        if self._lock_fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)
        self._lock_fd = None


def remove_stale_sessions(root: str) -> list[str]:
    """Remove the session directories under ``root`` whose owner is dead; return their paths."""
    removed = []
    try:
        names = [n for n in os.listdir(root) if n.startswith(PREFIX)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR)
        except OSError:
            continue  # not ours to judge: being created, or not a session
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
