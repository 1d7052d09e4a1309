"""Progress bars in tasks and actors, drawn by the driver: Ray's ``ray.experimental.tqdm_ray``.

``tqdm`` here has the part of ``tqdm.tqdm`` that Ray's has (``desc``, ``total``, ``unit``, ``position``,
``update``, ``set_description``, ``refresh``, ``close``, ``n``, ``total``, iteration). In a worker process it
sends the bar's state, at most once per ``flush_interval_s`` and always at ``close``, as one JSON line marked
with ``RAY_TQDM_MAGIC`` on the worker's output; that line travels to the driver as the worker's other output
does, and the driver draws every bar itself (``anyray.experimental.bars``) instead of printing the line. In the
driver's own process (the local backend, or a bar the driver's code makes) the state goes to the drawing
directly.

``safe_print`` prints without breaking the bars: it takes them off the terminal, prints and draws them again.
Once the driver imports this module or draws a bar, ``print`` is ``safe_print`` (Ray: once it draws a bar, so a
``print(ray.get(...))`` that started before the first bar printed through the bars; ``RAY_TQDM_PATCH_PRINT=0``
keeps the builtin).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Iterable

from anyray import context

from .bars import RAY_TQDM_MAGIC, BarManager, instance, patch_print, safe_print


def _number(value, what: str, *, integer: bool = False):
    kinds = int if integer else (int, float)
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        raise TypeError(f"tqdm({what}=...) takes {'an int' if integer else 'a number'} or None, "
                        f"not {type(value).__name__}: pass e.g. {what}=10.")
    if value is not None and value < 0:
        raise ValueError(f"tqdm({what}={value!r}) must not be negative.")
    return value


class tqdm:  # noqa: N801 - Ray's name
    """A progress bar for a task or an actor, drawn by the driver (one line per bar, below what tasks print).

    Takes the arguments of Ray's ``tqdm_ray.tqdm``: ``iterable`` (iterate the bar to go through it, one step
    per item; its ``len()``, if it has one, is the total; the bar closes at the end, as tqdm's), ``desc``,
    ``total``, ``unit``, ``position`` (the bar's line among those of this worker) and ``flush_interval_s``
    (the most often, in seconds, that the state goes to the driver; 1 by default; ``close`` and ``refresh``
    always send it).
    """

    DEFAULT_FLUSH_INTERVAL_SECONDS = 1.0

    def __init__(self, iterable: Iterable | None = None, desc: str | None = None, total: int | None = None,
                 unit: str | None = None, position: int | None = None, flush_interval_s: float | None = None):
        if total is None and iterable is not None:
            try:
                total = len(iterable)
            except (TypeError, AttributeError):
                total = None
        if desc is not None and not isinstance(desc, str):
            raise TypeError(f"tqdm(desc=...) takes a str, not {type(desc).__name__}.")
        self._iterable = iterable
        self._desc = desc or ""
        self._total = _number(total, "total")
        self._unit = unit or "it"
        self._pos = _number(position, "position", integer=True) or 0
        interval = _number(flush_interval_s, "flush_interval_s")
        self._flush_interval_s = self.DEFAULT_FLUSH_INTERVAL_SECONDS if interval is None else interval
        self._uuid = uuid.uuid4().hex
        self._pid = os.getpid()
        self._x = 0
        self._closed = False
        self._last_flush = 0.0

    def set_description(self, desc: str) -> None:
        """The bar's description from now on."""
        self._desc = desc or ""
        self._dump_state()

    def update(self, n: int | float = 1) -> None:
        """Count ``n`` more steps done."""
        self._x += n
        self._dump_state()

    def refresh(self) -> None:
        """Send the bar's state to the driver now."""
        self._dump_state(force=True)

    def close(self) -> None:
        """The bar is done: the driver draws it a last time and keeps that line."""
        if not self._closed:
            self._closed = True
            self._dump_state(force=True)

    def __enter__(self) -> tqdm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def total(self):
        return self._total

    @total.setter
    def total(self, total) -> None:
        self._total = _number(total, "total")

    @property
    def n(self):
        return self._x

    @n.setter
    def n(self, n) -> None:
        self._x = n

    def __iter__(self):
        if self._iterable is None:
            raise ValueError("This tqdm has no iterable to go through: pass one, tqdm(iterable, ...), or count "
                             "steps with update().")
        for item in self._iterable:
            self.update(1)
            yield item
        self.close()  # as tqdm's: gone through, the bar is done (Ray's stays open)

    def _state(self) -> dict:
        return {"__magic_token__": RAY_TQDM_MAGIC, "x": self._x, "pos": self._pos, "desc": self._desc,
                "total": self._total, "unit": self._unit, "ip": context.worker_ip or "127.0.0.1", "pid": self._pid,
                "uuid": self._uuid, "closed": self._closed}

    def _dump_state(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_flush < self._flush_interval_s:
            return
        self._last_flush = now
        if context.worker_process:  # the worker's output carries it to the driver, one line in one write
            sys.stdout.write(json.dumps(self._state()) + "\n")
            sys.stdout.flush()
        else:
            task = context.current_task.get()
            name = task and (task.actor.class_name if task.actor is not None else task.name)
            instance().process_state_update(self._state(), f"({name}) " if name else "")


if not context.worker_process:  # the driver: its print goes above the bars from now on
    patch_print()

__all__ = ["RAY_TQDM_MAGIC", "BarManager", "instance", "safe_print", "tqdm"]
