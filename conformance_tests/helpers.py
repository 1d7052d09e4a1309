"""Actors and checks the conformance tests use to make situations happen without relying on timing.

The actors live in this importable module so every backend can load them in
its workers; each wait has a generous deadline so a broken backend fails a
test instead of hanging the session.
"""

from __future__ import annotations

import asyncio
import time

import anyray

DEADLINE = 30.0  # seconds any signalling wait may take before the test counts as failed


@anyray.remote
class Signal:
    """A one-shot event: ``wait`` returns once someone called ``send``."""

    def __init__(self):
        self._event = None

    def _get(self) -> asyncio.Event:
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    async def wait(self, timeout: float = DEADLINE) -> bool:
        await asyncio.wait_for(self._get().wait(), timeout)
        return True

    async def send(self) -> None:
        self._get().set()

    async def is_set(self) -> bool:
        return self._get().is_set()


@anyray.remote
class Barrier:
    """``arrive`` returns once ``parties`` callers have arrived; it raises if they never do."""

    def __init__(self, parties: int):
        self._parties = parties
        self._arrived = 0
        self._event = None

    async def arrive(self, timeout: float = DEADLINE) -> int:
        if self._event is None:
            self._event = asyncio.Event()
        self._arrived += 1
        if self._arrived >= self._parties:
            self._event.set()
        await asyncio.wait_for(self._event.wait(), timeout)
        return self._arrived


@anyray.remote
class Arrivals:
    """Counts arrivals; ``hold_until_all_arrive`` waits for them without lending its CPU."""

    def __init__(self):
        self.count = 0

    def arrive(self) -> int:
        self.count += 1
        return self.count

    def arrived(self) -> int:
        return self.count


def hold_until_all_arrive(arrivals, parties: int, timeout: float = DEADLINE) -> None:
    """Inside a task: arrive, then poll until ``parties`` tasks have, keeping this task's CPU (a task
    blocked in ``get`` or ``wait`` lends its CPU, which would let one node run all the parties)."""

    arrivals.arrive.remote()
    deadline = time.monotonic() + timeout
    count = None
    while time.monotonic() < deadline:
        count = _poll(arrivals.arrived.remote(), deadline) or count
        if count is not None and count >= parties:
            return
        time.sleep(0.005)
    seen = "the arrivals actor never answered" if count is None else f"only {count} of {parties} tasks arrived"
    raise TimeoutError(f"{seen} within {timeout} s")


def _poll(ref, deadline: float):
    """The value of ``ref``, read with ``get(timeout=0)`` until ``deadline`` (then None): lends no CPU."""
    from anyray.exceptions import GetTimeoutError

    while time.monotonic() < deadline:
        try:
            return anyray.get(ref, timeout=0)  # answers at once: nothing is lent
        except GetTimeoutError:
            time.sleep(0.005)
    return None


def hold_until_set(signal, timeout: float = DEADLINE) -> None:
    """Inside a task: poll until ``signal`` is sent, keeping this task's CPU (see ``hold_until_all_arrive``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _poll(signal.is_set.remote(), deadline):
            return
        time.sleep(0.005)
    raise TimeoutError(f"the signal was not sent within {timeout} s")


@anyray.remote
class Recorder:
    """An append-only log; ``record`` returns how many entries there are now."""

    def __init__(self):
        self._entries = []

    def record(self, entry) -> int:
        self._entries.append(entry)
        return len(self._entries)

    def entries(self) -> list:
        return list(self._entries)


@anyray.remote
class Counter:
    """A plain stateful actor: a number and a log."""

    def __init__(self, start=0):
        self.value = start
        self.log = []

    def incr(self, by=1):
        self.value += by
        return self.value

    def get(self):
        return self.value

    def pair(self):
        return self.value, -self.value

    def append(self, item):
        self.log.append(item)
        return len(self.log)

    def get_log(self):
        return self.log

    def fail(self, message):
        raise ValueError(message)


@anyray.remote
def echo(value):
    return value


@anyray.remote
def wait_for_signal(signal, value=None):
    """Blocks (in ``get``) until ``signal`` is sent, then returns ``value``."""
    anyray.get(signal.wait.remote())
    return value


@anyray.remote
def busy_interval(seconds):
    """Keeps its CPUs for ``seconds`` (sleeping: a task waiting in ``get`` would lend them); says when it ran."""
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def most_at_once(intervals) -> int:
    """The most ``(start, end)`` intervals that overlap at one instant (one ending as another starts do not)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def assert_runtime_works() -> None:
    """The runtime still runs a task and returns its value."""
    assert anyray.get(echo.remote("still working"), timeout=DEADLINE) == "still working"


def wait_until(predicate, timeout: float = DEADLINE, interval: float = 0.02, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test if it never becomes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not become true within {timeout} s")
        time.sleep(interval)


def recorded(recorder, entry, timeout: float = DEADLINE) -> None:
    """Wait until ``entry`` is in the recorder's log."""
    wait_until(lambda: entry in anyray.get(recorder.entries.remote(), timeout=DEADLINE), timeout,
               what=f"{entry!r} recorded")
