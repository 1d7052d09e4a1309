"""What a worker writes to ``sys.stdout`` and ``sys.stderr``, each line marked as Ray marks it on the driver:
``(name pid=N)``, and ``(name pid=N, ip=HOST)`` from a cluster's node, where ``name`` is the running task's
function or the actor's class. ``logging`` records go through these streams too (Python's handler of last
resort, or a ``StreamHandler`` the user's code makes), so they reach the driver marked with their task and
node. With ``init(log_to_driver=False)`` nothing a worker writes reaches the driver, as Ray.
"""

from __future__ import annotations

import io
import os
import sys
import threading

from anyray.context import current_task


class Prefixed(io.TextIOBase):
    """A text stream that marks each line it passes on to ``target`` with the writing task (or the last one this
    worker ran, for a thread of its own) and the worker's pid (and ``ip``)."""

    def __init__(self, target, ip: str | None):
        self._target = target
        self._tail = f"pid={os.getpid()}" + (f", ip={ip}" if ip else "") + ") "
        self._name = ""
        self._at_start = True
        self._lock = threading.Lock()

    def _prefix(self) -> str:
        ctx = current_task.get()
        if ctx is not None:
            name = ctx.actor.class_name if ctx.actor is not None else ctx.name
            if name:
                self._name = name
        return f"({self._name} {self._tail}" if self._name else f"({self._tail}"

    def write(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            out = []
            for piece in text.splitlines(keepends=True):
                if self._at_start:
                    out.append(self._prefix())
                out.append(piece)
                self._at_start = piece.endswith(("\n", "\r"))
            self._target.write("".join(out))
            if self._at_start:  # line-buffered: a whole line reaches the driver now, not at the worker's exit
                self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # faulthandler, subprocess: the stream underneath
        return self._target.fileno()

    def isatty(self) -> bool:
        return self._target.isatty()

    @property
    def encoding(self):
        return getattr(self._target, "encoding", "utf-8")

    @property
    def buffer(self):  # bytes written here bypass the marks
        return self._target.buffer


def mark_streams(setup: dict) -> None:
    """Mark this worker's ``sys.stdout`` and ``sys.stderr`` (after a cluster node's capture, if any), or send
    them nowhere when the driver said ``log_to_driver=False``."""
    if setup.get("log_to_driver") is False:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the worker
        return
    ip = setup.get("node_ip")
    sys.stdout = Prefixed(sys.stdout, ip)
    sys.stderr = Prefixed(sys.stderr, ip)
