"""``ray.util.queue``: a first-in first-out queue that any task, actor or driver can share.

The items live in an async actor (so a blocked ``get`` does not stop a ``put``); a ``Queue`` object is a
thin client around that actor's handle, so it can be passed to tasks and actors like any handle. Built
on the public API only, so it works on every backend.
"""

from __future__ import annotations

import asyncio
import queue as _stdlib_queue
from collections.abc import Iterable
from typing import Any

from .. import api
from ..actor import exit_actor

__all__ = ["Empty", "Full", "Queue"]


class Empty(_stdlib_queue.Empty):
    """Raised by a ``get`` that finds the queue empty (at once, or when its timeout expires)."""


class Full(_stdlib_queue.Full):
    """Raised by a ``put`` that finds the queue full (at once, or when its timeout expires)."""


# What the actor answers instead of raising, so the caller raises a plain Empty/Full (not a task error).
_EMPTY = "__anyray_queue_empty__"
_FULL = "__anyray_queue_full__"


class _QueueActor:
    """Holds the items in an ``asyncio.Queue``; every method runs on the actor's event loop."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return _FULL
        return None

    async def get(self, timeout=None):
        try:
            return False, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return True, None

    async def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return _FULL
        return None

    async def put_nowait_batch(self, items):
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return (f"Cannot add {len(items)} items to queue of size {self.queue.qsize()} "
                    f"and maxsize {self.maxsize}.")
        for item in items:
            self.queue.put_nowait(item)
        return None

    async def get_nowait(self):
        try:
            return False, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return True, None

    async def get_nowait_batch(self, num_items):
        if num_items > self.queue.qsize():
            return True, f"Cannot get {num_items} items from queue of size {self.queue.qsize()}."
        return False, [self.queue.get_nowait() for _ in range(num_items)]

    async def stop(self):
        exit_actor()


_QueueActorClass = api.remote(_QueueActor)


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")


def _after_put(answer) -> None:
    if answer == _FULL:
        raise Full
    if answer is not None:
        raise Full(answer)


def _after_get(answer) -> Any:
    empty, value = answer
    if empty:
        raise Empty
    return value


class Queue:
    """A first-in first-out queue held by an actor, shared by passing the ``Queue`` to tasks and actors.

    ``maxsize`` <= 0 means unbounded. ``actor_options`` are passed to ``.options()`` of the actor that holds
    the items (``num_cpus``, ``name``, ``lifetime``...). ``put``/``get`` block while the queue is full/empty
    (up to ``timeout`` seconds, then ``Full``/``Empty``); with ``block=False`` they raise at once.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool):
            raise TypeError(f"Queue(maxsize=...) takes an int (0 or less for no limit), got {maxsize!r}")
        if actor_options is not None and not isinstance(actor_options, dict):
            raise TypeError(f"Queue(actor_options=...) takes a dict of actor options, got {actor_options!r}")
        self.maxsize = maxsize
        self.actor = _QueueActorClass.options(**(actor_options or {})).remote(maxsize)

    def _handle(self):
        if self.actor is None:
            raise RuntimeError("This Queue was shut down (Queue.shutdown()); create a new Queue to go on.")
        return self.actor

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """The number of items in the queue."""
        return api.get(self._handle().qsize.remote())

    def qsize(self) -> int:
        """The number of items in the queue."""
        return self.size()

    def empty(self) -> bool:
        return api.get(self._handle().empty.remote())

    def full(self) -> bool:
        return api.get(self._handle().full.remote())

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item; blocks while the queue is full (up to ``timeout`` s, then ``Full``); with
        ``block=False`` raises ``Full`` at once if there is no room."""
        if not block:
            _after_put(api.get(self._handle().put_nowait.remote(item)))
            return
        _check_timeout(timeout)
        _after_put(api.get(self._handle().put.remote(item, timeout)))

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """``put`` as an awaitable, for asyncio code (an async actor, an asyncio driver)."""
        if not block:
            _after_put(await self._handle().put_nowait.remote(item))
            return
        _check_timeout(timeout)
        _after_put(await self._handle().put.remote(item, timeout))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; blocks while the queue is empty (up to ``timeout`` s, then
        ``Empty``); with ``block=False`` raises ``Empty`` at once if there is none."""
        if not block:
            return _after_get(api.get(self._handle().get_nowait.remote()))
        _check_timeout(timeout)
        return _after_get(api.get(self._handle().get.remote(timeout)))

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """``get`` as an awaitable, for asyncio code."""
        if not block:
            return _after_get(await self._handle().get_nowait.remote())
        _check_timeout(timeout)
        return _after_get(await self._handle().get.remote(timeout))

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        return self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable) -> None:
        """Add all the items at once, or none: ``Full`` if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        _after_put(api.get(self._handle().put_nowait_batch.remote(list(items))))

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return ``num_items`` items at once, or none: ``Empty`` if there are fewer."""
        if not isinstance(num_items, int) or isinstance(num_items, bool):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        empty, value = api.get(self._handle().get_nowait_batch.remote(num_items))
        if empty:
            raise Empty(value)
        return value

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the actor that holds the queue (its items are lost).

        With ``force=False`` the actor is asked to exit once the calls before this one ran, and killed if it
        has not exited after ``grace_period_s`` seconds; with ``force=True`` it is killed at once. The Queue
        cannot be used afterwards.
        """
        if self.actor is not None:
            if force:
                api.kill(self.actor, no_restart=True)
            else:
                done = self.actor.stop.remote()
                ready, _ = api.wait([done], timeout=grace_period_s)
                if not ready:
                    api.kill(self.actor, no_restart=True)
        self.actor = None
