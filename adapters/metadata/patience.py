"""How long a metadata store's calls wait out an outage of its server: as Ray's GCS clients block and retry
for up to ``gcs_rpc_server_reconnect_timeout_s``, every call of the built-in stores (``get``, ``put``,
``delete``, ``scan``, ``compare_and_set``, ``put_unless``) retries, backing off, while the server is
unreachable, for up to ``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 s by default) from the call; past that
bound it raises ``ConnectionError`` naming the store, the bound and the setting.

A retried write whose first attempt may have been applied before its answer was lost (the connection broke
mid-command) is never applied twice in effect: puts write the same value again; a compare-and-set, a
``put_unless`` or a delete that a retry reports as not done is checked against the store (``settle``): if the
key holds what the call wrote (or is gone, for a delete), the call reports it done.
"""

from __future__ import annotations

import functools
import logging
import os
import time

log = logging.getLogger(__name__)

ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
OPEN_SECONDS = 10.0  # how long opening a store waits for its server (a command line fails fast at a wrong address)


def reconnect_seconds() -> float:
    """``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 by default): ValueError naming it if it is not seconds."""
    text = os.environ.get(ENV, "60")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{ENV} must be a number of seconds, got {text!r}.") from None
    if not value >= 0:
        raise ValueError(f"{ENV} must be 0 or more seconds, got {text!r}.")
    return value


class Patience:
    """Runs the calls of one store (``what``: "The Redis metadata store at HOST:PORT") so that each waits out an
    outage of its server for up to ``bound`` seconds. ``reach`` (``known.Reach``) tells whether an attempt of
    this thread failed (inside the client's own retries too). ``hurry()``: calls stop waiting (the process is
    stopping): one attempt each."""

    def __init__(self, what: str, reach, bound: float | None = None):
        self.what, self.reach = what, reach
        self.bound = reconnect_seconds() if bound is None else bound
        self.hurried = False
        self._away: float | None = None  # since when calls found the server unreachable (logged once)

    def hurry(self) -> None:
        self.hurried = True

    def call(self, attempt, settle=None, bound: float | None = None):
        """``attempt()``, retried with backoff while it raises ``ConnectionError``, for up to the bound; then a
        ``ConnectionError`` that says so. ``settle(result)``: after an attempt failed, what a retry's result
        means (the write of the attempt that failed may have been applied)."""
        bound = self.bound if bound is None else bound
        start = time.monotonic()
        delay = 0.05
        self.reach.troubled()  # forget this thread's earlier failures
        while True:
            try:
                result = attempt()
            except ConnectionError as exc:
                waited = time.monotonic() - start
                if self._away is None:
                    self._away = time.monotonic()
                    log.warning("%s is unreachable (%s); calls wait for it for up to %g s (%s)", self.what, exc,
                                bound, ENV)
                if self.hurried:
                    raise ConnectionError(f"{self.what} is unreachable ({exc}); this process is stopping.") from None
                if waited >= bound:
                    raise ConnectionError(
                        f"{self.what} has been unreachable for {waited:.0f} s, beyond the {bound:g} s that calls "
                        f"wait for it ({ENV}): bring the server back, or set {ENV} to wait longer. Last error: "
                        f"{exc}") from None
                time.sleep(max(0.0, min(delay, start + bound - time.monotonic())))
                delay = min(delay * 2, 1.0)
                continue
            if self._away is not None:
                away, self._away = self._away, None
                log.info("%s is reachable again, after %.1f s", self.what, time.monotonic() - away)
            if settle is not None and self.reach.troubled():
                return self.call(functools.partial(settle, result), bound=bound)
            return result
