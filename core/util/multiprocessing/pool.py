"""``Pool``: ``multiprocessing.Pool``'s API (map, imap, starmap, apply_async...) run by a pool of actors.

Each of the pool's ``processes`` actors runs batches ("chunks") of calls; ``map`` splits its input into
chunks handed round-robin to the actors, ``imap`` keeps one chunk per actor in flight and hands out the
next as results come back. Built on the public API only (actors, ``wait``, ``get``), so it works on every
backend. As in Ray, the actors take no CPU of their own (``num_cpus=0``, unless ``ray_remote_args`` says
otherwise) and the pool may not be larger than the cluster's CPUs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError
from typing import Any

from ... import api
from ...actor import exit_actor

logger = logging.getLogger(__name__)


class _Raised:
    """What a batch holds for a call that raised: the exception, raised again where the result is read."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException):
        self.error = error


class _PoolActor:
    """One process of the pool: runs the initializer once, then batches of calls."""

    def __init__(self, initializer=None, initargs=None):
        if initializer is not None:
            initializer(*(initargs or ()))

    def ping(self):
        return None

    def run_batch(self, func, batch):
        results = []
        for args, kwargs in batch:
            try:
                results.append(func(*(args or ()), **(kwargs or {})))
            except Exception as exc:
                results.append(_Raised(exc))
        return results

    def stop(self):
        exit_actor()


_PoolActorClass = api.remote(num_cpus=0)(_PoolActor)


def _unpack(batch: list) -> list:
    for value in batch:
        if isinstance(value, _Raised):
            raise value.error
    return batch


def _first_error(batch: list) -> BaseException | None:
    for value in batch:
        if isinstance(value, _Raised):
            return value.error
    return None


class AsyncResult:
    """The result of ``apply_async``/``map_async``/``starmap_async``: ``get(timeout)``, ``wait``, ``ready``,
    ``successful``. A thread collects the batches as they finish, then calls ``callback`` with the result
    (all went well) or ``error_callback`` with the first exception."""

    def __init__(self, refs: list, callback=None, error_callback=None, single_result: bool = False):
        self._refs = list(refs)
        self._batches: list = [None] * len(self._refs)
        self._error: BaseException | None = None
        self._single = single_result
        self._callback = callback
        self._error_callback = error_callback
        self._thread = threading.Thread(target=self._collect, name="anyray-pool-result", daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        position = {ref: i for i, ref in enumerate(self._refs)}
        pending = list(self._refs)
        while pending:
            ready, pending = api.wait(pending, num_returns=1)
            for ref in ready:
                try:
                    batch = api.get(ref)
                except Exception as exc:  # the actor died, the batch's result could not be read...
                    batch = [_Raised(exc)]
                self._batches[position[ref]] = batch
                if self._error is None:
                    self._error = _first_error(batch)
                    if self._error is not None and self._error_callback is not None:
                        self._error_callback(self._error)
        if self._error is None and self._callback is not None:
            self._callback(self._value())

    def _value(self):
        values = [value for batch in self._batches for value in _unpack(batch)]
        return values[0] if self._single else values

    def wait(self, timeout: float | None = None) -> None:
        """Return once the result is ready or ``timeout`` seconds passed (raises nothing)."""
        self._thread.join(timeout)

    def get(self, timeout: float | None = None):
        """The result (a list, or one value for ``apply_async``); raises the first exception a call raised,
        or ``multiprocessing.TimeoutError`` if it is not ready within ``timeout`` seconds."""
        self.wait(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"The result was not ready within {timeout} seconds")
        return self._value()

    def ready(self) -> bool:
        """Whether every call finished."""
        return not self._thread.is_alive()

    def successful(self) -> bool:
        """Whether no call raised; ``ValueError`` if the result is not ready yet."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._error is None


class IMapIterator:
    """The results of ``imap`` (in input order) or ``imap_unordered`` (as they finish): at most one chunk
    per actor is in flight; each chunk that comes back lets the next one go."""

    def __init__(self, pool: Pool, func: Callable, iterable: Iterable, chunksize: int, ordered: bool):
        self._pool = pool
        self._func = func
        self._items = iter(iterable)
        self._chunksize = chunksize
        self._ordered = ordered
        self._exhausted = False
        self._in_flight: dict[Any, int] = {}  # ref -> chunk number
        self._done: dict[int, list] = {}  # chunk number -> its batch, not yet handed out
        self._next_chunk = 0  # number the next submitted chunk gets
        self._next_out = 0  # (ordered) the chunk whose values come next
        self._ready: list = []  # values ready to hand out
        for _ in range(pool._size):
            self._submit_next()

    def _submit_next(self) -> None:
        if self._exhausted:
            return
        chunk = list(itertools.islice(self._items, self._chunksize))
        if len(chunk) < self._chunksize:
            self._exhausted = True
        if not chunk:
            return
        ref = self._pool._run_batch(self._next_chunk % self._pool._size, self._func, [((v,), {}) for v in chunk])
        self._in_flight[ref] = self._next_chunk
        self._next_chunk += 1

    def __iter__(self):
        return self

    def __next__(self):
        return self.next()

    def next(self, timeout: float | None = None):
        """The next result; ``StopIteration`` at the end, ``multiprocessing.TimeoutError`` if none is ready
        within ``timeout`` seconds; a call that raised raises here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if self._ordered and self._next_out in self._done:
                self._ready = list(self._done.pop(self._next_out))
                self._next_out += 1
                continue
            if not self._ordered and self._done:
                self._ready = list(self._done.pop(min(self._done)))
                continue
            if not self._in_flight:
                raise StopIteration
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _ = api.wait(list(self._in_flight), num_returns=1, timeout=remaining)
            if not ready:
                raise TimeoutError(f"No result was ready within {timeout} seconds")
            for ref in ready:
                number = self._in_flight.pop(ref)
                try:
                    self._done[number] = api.get(ref)
                except Exception as exc:
                    self._done[number] = [_Raised(exc)]
                self._submit_next()
        value = self._ready.pop(0)
        if isinstance(value, _Raised):
            raise value.error
        return value


class Pool:
    """A pool of ``processes`` actors with ``multiprocessing.Pool``'s API.

    ``processes`` defaults to the cluster's CPUs and may not exceed them. ``initializer(*initargs)`` runs
    once in each actor. ``maxtasksperchild``: an actor that ran that many batches is replaced by a new one
    (after its queued batches ran). If no runtime is up, the pool starts one: connected to ``ray_address``,
    else to ``$RAY_ADDRESS``/``$ANYRAY_ADDRESS``, else a new one with ``num_cpus=processes``.
    ``ray_remote_args`` are the actors' options (``num_cpus``, ``resources``...). ``context`` is accepted
    and ignored, as in Ray.
    """

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: Iterable | None = None, maxtasksperchild: int | None = None, context: Any = None,
                 ray_address: str | None = None, ray_remote_args: dict | None = None):
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool)):
            raise TypeError(f"Pool(processes=...) takes an int (or None for every CPU), got {processes!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"Pool(initializer=...) takes a callable, got {initializer!r}")
        if maxtasksperchild is not None and (not isinstance(maxtasksperchild, int) or maxtasksperchild < 1):
            raise ValueError(f"Pool(maxtasksperchild=...) takes an int of 1 or more (or None), got "
                             f"{maxtasksperchild!r}")
        if ray_remote_args is not None and not isinstance(ray_remote_args, dict):
            raise TypeError(f"Pool(ray_remote_args=...) takes a dict of actor options, got {ray_remote_args!r}")
        if context is not None:
            logger.warning("Pool(context=...) is ignored: the pool's processes are actors of the runtime.")
        self._closed = False
        self._initializer = initializer
        self._initargs = tuple(initargs) if initargs is not None else None
        self._maxtasks = maxtasksperchild
        self._actor_class = _PoolActorClass.options(**(ray_remote_args or {}))
        self._stopping: list = []  # refs of stop() calls of actors being retired
        self._round_robin = 0
        # joblib submits from its result callbacks (the AsyncResult threads) as well as from the caller
        self._lock = threading.Lock()
        self._size = self._start_runtime(processes, ray_address)
        self._actors = [self._new_actor() for _ in range(self._size)]  # [actor, batches run]
        api.get([actor.ping.remote() for actor, _ in self._actors])

    @staticmethod
    def _start_runtime(processes, ray_address) -> int:
        if not api.is_initialized():
            if ray_address is not None:
                api.init(address=ray_address)
            elif os.environ.get("RAY_ADDRESS") or os.environ.get("ANYRAY_ADDRESS"):
                api.init()
            else:
                api.init(num_cpus=processes)
        cpus = int(api.cluster_resources().get("CPU", 0))
        if processes is None:
            processes = cpus
        if processes <= 0:
            raise ValueError("Processes in the pool must be >0.")
        if cpus < processes:
            raise ValueError(f"Tried to start a pool with {processes} processes on an existing cluster, but "
                             f"there are only {cpus} CPUs in the cluster.")
        return processes

    def _new_actor(self) -> list:
        return [self._actor_class.remote(self._initializer, self._initargs), 0]

    def _check_running(self) -> None:
        if self._closed:
            raise ValueError("Pool not running")

    def _run_batch(self, index: int | None, func: Callable, batch: list):
        """Send ``batch`` to the actor at ``index`` (``None``: the next one, round-robin)."""
        with self._lock:
            if index is None:
                self._round_robin = (self._round_robin + 1) % self._size
                index = self._round_robin
            entry = self._actors[index]
            ref = entry[0].run_batch.remote(func, batch)
            entry[1] += 1
            if self._maxtasks is not None and entry[1] >= self._maxtasks:
                self._stopping.append(entry[0].stop.remote())  # runs after the batches queued before it
                self._actors[index] = self._new_actor()
            return ref

    def _chunksize_for(self, count: int) -> int:
        size, extra = divmod(count, self._size * 4)
        return max(1, size + (1 if extra else 0))

    def _map_async(self, func, iterable, chunksize, unpack, callback=None, error_callback=None) -> AsyncResult:
        self._check_running()
        if chunksize is not None and (not isinstance(chunksize, int) or chunksize < 1):
            raise ValueError(f"chunksize must be an int of 1 or more, got {chunksize!r}")
        items = list(iterable)
        chunksize = chunksize or self._chunksize_for(len(items))
        refs = []
        for number, start in enumerate(range(0, len(items), chunksize)):
            chunk = items[start:start + chunksize]
            batch = [(tuple(args) if unpack else (args,), {}) for args in chunk]
            refs.append(self._run_batch(number % self._size, func, batch))
        return AsyncResult(refs, callback, error_callback)

    # -- multiprocessing.Pool's API ------------------------------------------------------------

    def apply(self, func: Callable, args: tuple | None = None, kwargs: dict | None = None):
        """``func(*args, **kwargs)`` on one of the actors; its result (or its exception, raised)."""
        return self.apply_async(func, args, kwargs).get()

    def apply_async(self, func: Callable, args: tuple | None = None, kwargs: dict | None = None,
                    callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        """As ``apply``, without waiting: an ``AsyncResult``."""
        self._check_running()
        ref = self._run_batch(None, func, [(args, kwargs)])
        return AsyncResult([ref], callback, error_callback, single_result=True)

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(x) for x in iterable]``, run in chunks over the actors; raises the first exception."""
        return self._map_async(func, iterable, chunksize, unpack=False).get()

    def map_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                  callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        """``[func(*args) for args in iterable]``."""
        return self._map_async(func, iterable, chunksize, unpack=True).get()

    def starmap_async(self, func: Callable, iterable: Iterable, chunksize: int | None = None,
                      callback: Callable | None = None, error_callback: Callable | None = None) -> AsyncResult:
        return self._map_async(func, iterable, chunksize, True, callback, error_callback)

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """An iterator of ``func(x)`` in input order, one chunk per actor in flight."""
        self._check_running()
        return IMapIterator(self, func, iterable, self._valid_chunksize(chunksize), ordered=True)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        """As ``imap``, the results in the order they finish."""
        self._check_running()
        return IMapIterator(self, func, iterable, self._valid_chunksize(chunksize), ordered=False)

    @staticmethod
    def _valid_chunksize(chunksize) -> int:
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int of 1 or more, got {chunksize!r}")
        return chunksize

    def close(self) -> None:
        """Take no more work; the actors exit once the work given them is done (``join`` waits for it)."""
        if self._closed:
            return
        for actor, _ in self._actors:
            self._stopping.append(actor.stop.remote())
        self._closed = True

    def terminate(self) -> None:
        """Stop at once: the actors are killed, work still running is lost."""
        self.close()
        for actor, _ in self._actors:
            api.kill(actor)

    def join(self) -> None:
        """Wait for the actors of a closed pool to exit; ``ValueError`` if the pool was not closed."""
        if not self._closed:
            raise ValueError("Pool is still running")
        if self._stopping:
            api.wait(self._stopping, num_returns=len(self._stopping))
            self._stopping = []

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info) -> None:
        self.terminate()
