"""A pool of daemon threads: idle ones are reused, and none of them holds up interpreter exit.

``concurrent.futures.ThreadPoolExecutor`` joins its threads at exit, so one
task stuck in a loop would hang the user's program after ``shutdown``;
Ray's workers are killed at exit, and these threads likewise just stop.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class DaemonThreadPool:
    """Runs submitted callables in FIFO order on at most ``max_threads`` threads."""

    def __init__(self, name: str, max_threads: int = 1 << 16):
        self._name = name
        self._max = max_threads
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0
        self._closed = False

    def submit(self, fn: Callable, *args) -> None:
        with self._lock:
            if self._closed:
                return
            if self._idle:
                self._idle -= 1
                spawn = False
            else:
                spawn = self._threads < self._max
                self._threads += spawn
        self._work.put((fn, args))
        if spawn:
            threading.Thread(target=self._loop, name=f"{self._name}-{self._threads}", daemon=True).start()

    def _loop(self) -> None:
        work = self._work
        while True:
            item = work.get()
            if item is None:
                return
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - a pool thread must survive whatever it ran
                log.exception("a call on a pool thread failed")
            del item, fn, args  # an idle thread must not keep the last task's refs alive
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Stop idle threads; busy ones stop after their current call (or with the process)."""
        with self._lock:
            self._closed = True
            count = self._threads
        for _ in range(count):
            self._work.put(None)
