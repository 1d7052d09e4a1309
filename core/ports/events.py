"""The EventSink port: where a backend reports the tasks it finished (``Backend.__init__``'s ``events``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable

from ..events import JobEvents, TaskRecord


class EventSink(ABC):
    """Receives finished tasks for ``timeline()`` and ``error_info()``; the core's ``JobEvents`` is one."""

    @abstractmethod
    def task_finished(self, record: TaskRecord) -> None:
        """A task ran in this process; a failed one is printed on the driver's stderr as it happens."""

    @abstractmethod
    def add_source(self, pull: Callable[[], Iterable[TaskRecord]]) -> None:
        """Also report records kept outside this sink (where a backend's workers report them).

        ``pull()`` is called before each read and returns the records that are
        new since its previous call; they are not echoed again (the process
        that ran the task printed its failure)."""


EventSink.register(JobEvents)
