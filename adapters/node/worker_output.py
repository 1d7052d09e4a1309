"""What a worker's tasks leave behind besides results: their records and what they print.

Records go to the node with the next result (``ForwardedEvents``). A cluster
node's workers send what tasks print to the node, which forwards it to the
tasks' drivers (``Output``); the multiprocess backend's workers print
directly to the driver's terminal.
"""

from __future__ import annotations

import collections
import io
import sys
import threading

from anyray.events import JobEvents

from . import messages as m


class ForwardedEvents(JobEvents):
    """Task records of this worker: echoed here (stderr is the driver's) and sent with the next result."""

    def __init__(self):
        super().__init__(max_spans=1000)
        self.outbox: list = []

    def task_finished(self, record) -> None:
        super().task_finished(record)
        self.outbox.append(m.RecordRow.pack(record.task_id, record.name, record.kind, record.start, record.end,
                                             record.pid, record.tid, record.error_type, record.message))

    def take(self) -> list:
        out, self.outbox = self.outbox, []
        return out


class Output:
    """Lines the tasks of this worker printed, not sent yet; sent as OUTPUT before the next result."""

    def __init__(self, node):
        self.node = node
        self.lines: collections.deque = collections.deque()  # OutputLine tuples
        self.captured = False

    def capture(self) -> None:
        """Send what tasks print to the node, for their drivers (a cluster node's workers)."""
        sys.stdout = Captured(self, "stdout", sys.stdout)
        sys.stderr = Captured(self, "stderr", sys.stderr)
        self.captured = True

    def flush_streams(self) -> None:
        """Lines not ended yet go out too (the end of each task)."""
        if self.captured:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()

    def send(self) -> None:
        out = []
        while self.lines:
            out.append(self.lines.popleft())
        if out:
            self.node.send(m.OUTPUT, out)


class Captured(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker whose output goes to the drivers of its tasks."""

    def __init__(self, output: Output, stream: str, original):
        self._output, self._stream, self._original = output, stream, original
        self._partial = ""  # the start of a line not ended yet
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:  # whole lines go out, each piece of print() does not
            text = self._partial + text
            cut = text.rfind("\n") + 1
            self._partial = text[cut:]
            if cut:
                self._output.lines.append(m.OutputLine.pack(self._job(), self._stream, text[:cut]))
        return len(text)

    def _job(self) -> bytes:
        return self._output.node.runtime.job_id

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Send a line not ended yet too (explicit flushes, and the end of each task)."""
        with self._lock:
            if self._partial:
                self._output.lines.append(m.OutputLine.pack(self._job(), self._stream, self._partial))
                self._partial = ""

    @property
    def encoding(self):
        return getattr(self._original, "encoding", "utf-8")
