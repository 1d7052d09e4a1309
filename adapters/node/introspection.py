"""What a node tells about the work it ran: the task records its workers send (``timeline``,
``error_info``) and what its tasks print.

These are the node's own sinks, for a node that serves one driver (the
multiprocess backend): records wait here until the driver's event log pulls
them, and output goes to this process's streams. A cluster node files both
per job instead (``cluster/records.py``).
"""

from __future__ import annotations

import collections
import sys

from anyray.events import TaskRecord


class LocalRecords:
    """Task records until the driver's event log pulls them."""

    def __init__(self):
        self._records: collections.deque = collections.deque()

    def add(self, worker, records: list) -> None:
        """Records of tasks ``worker`` finished."""
        self._records.extend(records)

    def pull(self) -> list:
        out = []
        while self._records:
            out.append(TaskRecord(*self._records.popleft()))
        return out


class LocalOutput:
    """What a worker's tasks printed (workers that forward it): here, on this process's own streams."""

    def add(self, worker, output: list) -> None:
        for _job, stream, text in output:
            getattr(sys, stream).write(text)
