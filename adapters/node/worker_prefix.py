"""What a worker writes to ``sys.stdout`` and ``sys.stderr``, each line marked as Ray marks it on the driver:
``(name pid=N)``, and ``(name pid=N, ip=HOST)`` from a cluster's node, where ``name`` is the running task's
function or the actor's class. ``logging`` records go through these streams too (Python's handler of last
resort, or a ``StreamHandler`` the user's code makes), so they reach the driver marked with their task and
node. With ``init(log_to_driver=False)`` nothing a worker writes reaches the driver, as Ray.

A worker that writes to the driver's terminal itself (multiprocess) sends the state lines of its progress bars
(``anyray.experimental.tqdm_ray``) to the driver's process instead, which draws them; from its first bar on, all
it writes goes that way, so that the driver prints it above the bars rather than through them. When the driver's
output is a terminal (``output_via_driver``), all it writes goes that way from the start.
"""

from __future__ import annotations

import io
import os
import sys
import threading

from anyray import context
from anyray.context import current_task
from anyray.experimental.bars import RAY_TQDM_MAGIC

from . import messages as m


class ToDriver:
    """Where a worker's streams send what they write once it draws progress bars (or from the start, when
    ``active``): the node in the driver's process, with the next OUTPUT (``worker_output.Output``), which
    prints it there (``LocalOutput``)."""

    def __init__(self, output, active: bool = False):
        self._output = output
        self.active = active

    def send(self, stream: str, text: str) -> None:
        self._output.lines.append(m.OutputLine.pack(self._output.node.runtime.job_id, stream, text))


class Prefixed(io.TextIOBase):
    """A text stream that marks each line it passes on to ``target`` with the writing task (or the last one this
    worker ran, for a thread of its own) and the worker's pid (and ``ip``)."""

    def __init__(self, target, ip: str | None, stream: str = "stdout", divert: ToDriver | None = None):
        self._target, self._stream, self._divert = target, stream, divert
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
            divert = self._divert
            if divert is not None and (divert.active or RAY_TQDM_MAGIC in text):
                divert.active = True
                divert.send(self._stream, "".join(out))
                return len(text)
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


def mark_streams(setup: dict, output=None) -> None:
    """Mark this worker's ``sys.stdout`` and ``sys.stderr`` (after a cluster node's capture, if any), or send
    them nowhere when the driver said ``log_to_driver=False``. ``output``: the worker's ``Output``, when its
    streams are the driver's terminal (they send there once the worker draws progress bars)."""
    context.worker_process, context.worker_ip = True, setup.get("node_ip")
    if setup.get("log_to_driver") is False:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the life of the worker
        return
    ip = setup.get("node_ip")
    divert = None if output is None else ToDriver(output, bool(setup.get("output_via_driver")))
    sys.stdout = Prefixed(sys.stdout, ip, "stdout", divert)
    sys.stderr = Prefixed(sys.stderr, ip, "stderr", divert)
