"""Rules every backend applies alike, written once: retry and restart limits, whether a demand fits
a node (one tolerance), and the warning for work no node can ever hold.

A leaf module (of anyray it imports only the exceptions), for the core and
for every adapter, built-in or a plugin's.
"""

from __future__ import annotations

import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping

from .exceptions import InfeasibleTaskWarning

UNLIMITED = -1  # max_retries, max_restarts, max_task_retries: no limit


def allows_another(limit: int, used: int) -> bool:
    """Whether one more retry (or restart) is allowed after ``used`` of them under ``limit`` (-1: no limit)."""
    return limit == UNLIMITED or used < limit


def call_retry_limit(call_options: dict, actor_options: dict) -> int:
    """How often an actor call runs again (after its actor restarted, or when it raised one of its
    ``retry_exceptions``): the method's ``max_task_retries``, else the actor's, as in Ray."""
    allowed = call_options.get("max_task_retries")
    if allowed is None:
        allowed = actor_options.get("max_task_retries")
    return allowed or 0


# -- resources --------------------------------------------------------------------------------------------
EPS = 1e-9  # resource amounts are floats (0.1 + 0.2 CPUs): every fit test allows this much


def fits(demand: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    """Whether ``offer`` (a node's total, or what it has free) holds every resource of ``demand``."""
    return all(v <= offer.get(k, 0.0) + EPS for k, v in demand.items())


def missing(demand: Mapping[str, float], offer: Mapping[str, float]) -> dict[str, float]:
    """The part of ``demand`` that ``offer`` lacks (empty when it fits)."""
    return {k: v for k, v in demand.items() if v > offer.get(k, 0.0) + EPS}


def user_stacklevel() -> int:
    """The ``stacklevel`` for :func:`warnings.warn`, called right here, that names the first frame outside
    anyray and its plugins: the user's ``.remote()`` line, however deep the backend's call stack is."""
    frame, level = sys._getframe(1), 1
    while frame is not None and _inside_anyray(frame.f_globals.get("__name__", "")):
        frame, level = frame.f_back, level + 1
    return level


def _inside_anyray(module: str) -> bool:
    return module.startswith("anyray") and not module.startswith("anyray.conformance")


class Feasibility:
    """Warns once per function or actor (``key``) whose demand no node can ever hold.

    ``totals()`` gives each live node's total resources; it is read again at
    most every ``refresh`` seconds (nodes may join) and only while a demand
    does not fit. ``text(name, demand, totals)`` words the warning for the
    backend ("this machine has ...", "no node of the cluster ..."). A demand
    shape once seen to fit is never checked again.
    """

    def __init__(self, totals: Callable[[], list[Mapping[str, float]]],
                 text: Callable[[str, dict, list[Mapping[str, float]]], str], refresh: float = 0.0):
        self._read, self._text, self._refresh = totals, text, refresh
        self._totals: list[Mapping[str, float]] | None = None
        self._read_at = float("-inf")
        self.known_to_fit: set[tuple] = set()  # demand shapes seen to fit: a caller may skip ``check`` for them
        self._warned: set = set()
        self._lock = threading.Lock()

    def check(self, key, name: str, demand: Mapping[str, float], shape: tuple | None = None) -> bool:
        """Whether ``demand`` fits some node; warn (once per ``key``) at the user's call site when not."""
        shape = shape if shape is not None else tuple(sorted(demand.items()))
        if shape in self.known_to_fit:
            return True
        with self._lock:
            totals = self._totals
            if totals is None or not self._fits_one(demand, totals):
                if time.monotonic() - self._read_at >= self._refresh or totals is None:
                    totals = self._totals = list(self._read())
                    self._read_at = time.monotonic()
            if self._fits_one(demand, totals):
                self.known_to_fit.add(shape)
                return True
            if key in self._warned:
                return False
            self._warned.add(key)
        warnings.warn(self._text(name, dict(demand), totals), InfeasibleTaskWarning, stacklevel=user_stacklevel())
        return False

    @staticmethod
    def _fits_one(demand, totals) -> bool:
        return any(fits(demand, total) for total in totals)


def largest(demand: Mapping[str, float], totals: list[Mapping[str, float]]) -> dict[str, float]:
    """The most of each resource of ``demand`` that any one node has (for the warning's text)."""
    return {k: max((t.get(k, 0.0) for t in totals), default=0.0) for k in demand}


def engine_text(node: str, cluster: str) -> Callable[[str, dict, list[Mapping[str, float]]], str]:
    """The warning's words for an engine's cluster, e.g. ``engine_text("worker", "the Dask cluster")``."""
    def text(name: str, demand: dict, totals: list[Mapping[str, float]]) -> str:
        biggest = largest(demand, totals)
        return (f"{name} needs {missing(demand, biggest)} but no {node} of {cluster} has that much (the largest "
                f"offer {biggest}); it will wait until a {node} with those resources joins.")
    return text
