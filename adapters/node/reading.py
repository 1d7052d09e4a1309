"""A thread about to wait for any of many results reads them off the workers' connections itself.

``read_results_here`` (pool.py) does this for a ``get``, whose refs each have one worker making them.
A loop of ``wait(num_returns=1)`` waits for whichever result comes first, from any worker: the waiting
thread takes over the reading of every worker connection no other thread is reading at that moment
(their reader threads sleep through it, as in ``WorkerHandle.read_until``), handles what arrives there
itself, so each result is sealed on the thread that waits for it, with no hand-off between threads,
and stops once ``done()``. A seal made elsewhere meanwhile (a worker whose connection it did not take,
a put from another thread) wakes it through ``wake_fd``.
"""

from __future__ import annotations

import os
import select
import time

from .framing import spin_budget
from .pool import _DeferredInterrupt

_SLICE = 1.0  # seconds one poll sleeps at most: what the waiter waits for may also come another way
_BATCH = 16  # rounds of messages already there read after the one waited for, before going back


def read_any_here(workers, done, timeout: float | None, wake_fd: int) -> None:
    """Read the connections of ``workers`` (WorkerHandles) on the calling thread until ``done()``, past
    ``timeout``, or until ``wake_fd`` (an eventfd) is written."""
    held = {}  # fd -> (handle, conn, its reader's poller)
    poller = select.epoll()
    try:
        for handle in workers:
            conn, theirs = handle._conn, handle._poller
            if conn is None or theirs is None or not handle._read_lock.acquire(False):
                continue
            try:
                theirs.modify(conn.fileno(), 0)  # its reader thread sleeps through what this thread reads
                poller.register(conn.fileno(), select.EPOLLIN)
            except (OSError, ValueError):  # closed under us
                handle._read_lock.release()
                continue
            held[conn.fileno()] = (handle, conn, theirs)
        poller.register(wake_fd, select.EPOLLIN)
        deadline = None if timeout is None else time.monotonic() + timeout
        drained = 0
        while True:
            if done():  # and then what else has come already (up to a batch): the next calls find it ready
                if drained >= _BATCH:
                    return
                drained += 1
                events = poller.poll(0)
                if not events:
                    return
                _handle(events, wake_fd, held, poller)
                continue
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            events = _spin(poller)
            if not events:
                events = poller.poll(_SLICE if left is None else min(left, _SLICE))
            _handle(events, wake_fd, held, poller)
            if not held and not done():
                return  # nothing left to read here: the caller waits the ordinary way
    finally:
        for fd in list(held):
            _give_back(held, fd)
        poller.close()


def _give_back(held: dict, fd: int) -> None:
    """The reader thread of connection ``fd`` reads it again."""
    handle, conn, theirs = held.pop(fd)
    try:
        theirs.modify(fd, select.EPOLLIN)
    except (OSError, ValueError):
        pass
    handle._read_lock.release()


def _handle(events, wake_fd: int, held: dict, poller) -> None:
    """Read one message off each connection ``events`` names, and handle it on this thread."""
    for fd, _ in events:
        if fd == wake_fd:
            _drain(wake_fd)
            continue
        handle, conn, _ = held[fd]
        with _DeferredInterrupt():
            try:
                msg = conn.recv_bytes()
            except (EOFError, OSError):  # closed: its reader thread sees it too, and reports the worker's end
                poller.unregister(fd)
                _give_back(held, fd)
                continue
            handle._pool._handle_message(handle, msg)


def _spin(poller) -> list:
    """Poll without sleeping for up to ``spin_budget()``: a result on its way arrives sooner than this
    thread would wake from a blocking wait."""
    deadline = time.perf_counter() + spin_budget()
    while True:
        events = poller.poll(0)
        if events or time.perf_counter() > deadline:
            return events


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except (BlockingIOError, OSError):
        pass
