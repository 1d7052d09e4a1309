"""A node's membership of the cluster: its record in the metadata store under a lease, renewed with each
heartbeat, and what a lapse means, for the node itself and for the others.

A record that lapses means its node is dead, unless nobody could renew it: when the metadata store was
unreachable (stopped, restarted, cut off), a node whose lease ran out during an outage it saw itself writes
its record again when the store is back (``Lease``), and the other nodes, who saw the outage too, wait one
lease after reaching the store again before they count a node whose record is missing dead
(``Deaths``). As Ray's raylets outlive a GCS restart within ``gcs_rpc_server_reconnect_timeout_s``, an outage
is survived for up to ``RECONNECT_SECONDS`` (60 s; ``RAY_gcs_rpc_server_reconnect_timeout_s``); beyond it a
node stops, as one whose lease lapsed.

Fencing: a node is declared dead by writing its dead marker (``DEAD`` + its id) in one atomic step only while
its record is absent, and a node renews its record only while no dead marker names it (``put_unless``).
Whichever comes first wins: a node partitioned away alone, which the others declared dead while they could
reach the store (its work retried, its actors restarted elsewhere), finds its marker and stops; one that wrote
its record again first is alive to everybody.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time

from ..metadata.patience import reconnect_seconds

log = logging.getLogger(__name__)

NODES = "nodes/"
DEAD = "dead/"  # node id -> JSON of its last record and how it ended (the dead marker; `anyray status` lists it)
DEAD_SECONDS = 3600.0  # how long a dead node stays listed (and fenced off)
# After an outage a node's renewal may wait out one more backoff of its store's retries (at most 1 s, and the
# client's own under 1 s: ``metadata/patience.py``): the others give it that long on top of a lease before they
# count it dead.
BACKOFF_SECONDS = 3.0


RECONNECT_SECONDS = reconnect_seconds()  # the store's calls wait as long for it (``metadata/patience.py``)


def put_unless(metadata, key: str, value: bytes, ttl: float | None, absent: list[str]) -> bool:
    """``metadata.put_unless`` (atomic in the built-in stores); for a store without it, check then put."""
    atomic = getattr(metadata, "put_unless", None)
    if atomic is not None:
        return atomic(key, value, ttl, absent)
    if any(metadata.get(k) is not None for k in absent):
        return False
    metadata.put(key, value, ttl=ttl)
    return True


def _outages(metadata) -> list[tuple[float, float | None]]:
    reach = getattr(metadata, "reach", None)
    return reach.outages() if reach is not None else []


def reachable_for(metadata) -> float:
    """Seconds this process has reached ``metadata`` since its last outage (inf if it never saw one)."""
    reach = getattr(metadata, "reach", None)
    return reach.reachable_for() if reach is not None else float("inf")


class Lease:
    """This node's record, renewed (``renew``, each heartbeat) only while no dead marker names the node;
    ``on_lost(why)`` once it must stop."""

    def __init__(self, metadata, node_id: str, record, seconds: float, on_lost,
                 reconnect_seconds: float = RECONNECT_SECONDS):
        self._metadata, self.node_id, self._record = metadata, node_id, record
        self.seconds, self.reconnect_seconds = seconds, reconnect_seconds
        self._on_lost = on_lost
        self._lock = threading.Lock()  # one renewal at a time (the heartbeat, and a lapse heard of)
        self._renewed: collections.deque = collections.deque(maxlen=64)  # monotonic times of renewals
        self.lost = False

    def register(self) -> None:
        """The node's first record; ``ConnectionError`` if the store is unreachable."""
        if not self._put():
            raise RuntimeError(f"node {self.node_id} is already listed as dead in the metadata store")

    def _put(self) -> bool:
        key = NODES + self.node_id
        done = put_unless(self._metadata, key, self._record(), self.seconds, [DEAD + self.node_id])
        if done:
            self._renewed.append(time.monotonic())
        return done

    def renew(self) -> None:
        """Renew the record (the heartbeat); ``ConnectionError`` while the store is unreachable."""
        with self._lock:
            if self.lost:
                return
            before = self._renewed[-1] if self._renewed else time.monotonic()
            try:
                done = self._put()
            except ConnectionError:
                outages = _outages(self._metadata)
                if outages and outages[-1][1] is None and \
                        time.monotonic() - outages[-1][0] > self.reconnect_seconds:
                    self._lose(f"the metadata store has been unreachable for more than {self.reconnect_seconds:g} s "
                               f"(gcs_rpc_server_reconnect_timeout_s)")
                raise
            if not done:
                self._lose("the cluster declared it dead (its lease lapsed) and moved its work")
            elif self._renewed[-1] - before > self.seconds and not self._excused(before):
                self._lose(f"its lease lapsed (no heartbeat for {self.seconds:g} s) while the metadata store was "
                           f"reachable: the cluster counts it dead")

    def lapsed(self) -> None:
        """This node's record lapsed, as the store tells: write it again if an outage this node saw explains
        the lapse (and no dead marker names it), else stop."""
        with self._lock:
            if self.lost:
                return
            renewed = list(self._renewed)
            # the renewal the lapse followed: the last one, or (already written again) the one before a gap
            starts = [renewed[-1]] if renewed else []
            starts += [a for a, b in zip(renewed, renewed[1:]) if b - a > self.seconds]
            if not any(self._excused(a) for a in starts):
                self._lose(f"its lease lapsed (no heartbeat for {self.seconds:g} s): the cluster counts it dead "
                           f"and has moved its work")
                return
            try:
                done = self._put()
            except ConnectionError:
                return  # the heartbeat keeps trying
            if done:
                log.info("node %s: its lease lapsed while the metadata store was unreachable; registered again",
                         self.node_id)
            else:
                self._lose("the cluster declared it dead (its lease lapsed) and moved its work")

    def close(self) -> None:
        """The node stops: its record is deleted, never written again (not waiting for a renewal in flight)."""
        self.lost = True

    def _excused(self, renewed: float) -> bool:
        """Whether a lease renewed at ``renewed`` ran out within an outage of the store this node saw: one that
        began before the lease ended, did not end before it was renewed, lasted at most ``reconnect_seconds``,
        and is recent."""
        now = time.monotonic()
        for began, ended in _outages(self._metadata):
            end = now if ended is None else ended
            if began <= renewed + self.seconds and end >= renewed and end - began <= self.reconnect_seconds:
                return True
        return False

    def _lose(self, why: str) -> None:
        self.lost = True
        self._on_lost(why)


class Deaths:
    """The other nodes' lapses as this node handles them: ``lapsed(node_id, record)`` declares the node dead
    (``on_dead(node_id)``) once it is sure: at once while this node has reached the store for a lease since its
    own last outage (and a backoff of the store's retries, ``BACKOFF_SECONDS``), else when it has (the node may
    write its record again meanwhile: then it lives on)."""

    def __init__(self, metadata, seconds: float, present, on_dead):
        self._metadata, self.seconds = metadata, seconds
        self._present, self._on_dead = present, on_dead  # present(node_id): its record is back
        self._closed = False

    def lapsed(self, node_id: str, record: dict, how: str = "its lease lapsed") -> None:
        if self._closed:
            return
        wait = self.seconds + BACKOFF_SECONDS - reachable_for(self._metadata)
        if wait > 0:  # the store was away for this node too: the other may not have been able to renew
            self._later(wait + 0.2, node_id, record)
            return
        value = json.dumps({**record, "ended": how, "ended_at": time.time()}).encode()
        try:
            if not put_unless(self._metadata, DEAD + node_id, value, DEAD_SECONDS, [DEAD + node_id, NODES + node_id]):
                if self._metadata.get(DEAD + node_id) is None:
                    return  # its record is back: it lives on
        except ConnectionError:
            self._later(self.seconds, node_id, record)
            return
        self._on_dead(node_id, record)

    def _later(self, delay: float, node_id: str, record: dict) -> None:
        def again():
            if not self._closed and not self._present(node_id):
                self.lapsed(node_id, record)
        timer = threading.Timer(delay, again)
        timer.daemon = True
        timer.start()

    def close(self) -> None:
        self._closed = True
