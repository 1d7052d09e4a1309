"""The other nodes of a cluster as one node sees them: their published records (resources, address),
what this node has handed to each since, and links to them, opened on first use.

Every node publishes its record with its heartbeat (``NODES``); a record that
lapses means the node is dead. The view is up to a heartbeat old, so it also
counts what this node has handed to each other node since, and what came
back (``place``, ``returned``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
import threading
import time

from anyray.policy import fits

from ..node import messages as m
from .lease import DEAD, DEAD_SECONDS, NODES, Deaths
from .peers import PeerLink, Transfer

log = logging.getLogger(__name__)

__all__ = ["DEAD", "DEAD_SECONDS", "NODES", "ClusterView"]


def ignore(ok, value) -> None:
    """The answer to a message another node needs no answer to: logged if it is a refusal."""
    if not ok:
        log.error("another node refused work: %r", value)


def _load(free: dict, total: dict) -> float:
    """The share of a node's CPUs in use (of all its resources when it has no CPUs)."""
    keys = ["CPU"] if total.get("CPU") else [k for k in total if total[k]]
    if not keys:
        return 1.0
    return max(1.0 - free.get(k, 0.0) / total[k] for k in keys)


class ClusterView:
    """The other nodes of the cluster: their published resources, and links to them, opened on first use."""

    def __init__(self, metadata, node_id: str, token: bytes, on_change, on_dead, on_self_lapsed=None,
                 lease_seconds: float = 3.0):
        self.node_id = node_id
        self._metadata = metadata
        self._token = token
        self.token = token  # the cluster's (never logged): what keys of this node derive from
        self._lock = threading.Lock()
        self.records: dict[str, dict] = {}
        self._mine: dict[str, dict] = {}       # demand in flight that I handed to each node
        self._spread_turn = 0  # equally loaded nodes take SPREAD work in turn
        self._at_record: dict[str, dict] = {}  # ... as it was when its last record arrived
        self._links: dict[str, PeerLink] = {}
        self._connecting: dict[str, threading.Lock] = {}
        self._on_change, self._on_dead, self._on_self_lapsed = on_change, on_dead, on_self_lapsed
        self.transfer = Transfer(token)
        self.on_stream = None  # on_stream(link, payload): a STREAM a linked node sent (set by the node)
        self._lapsing: set[str] = set()  # nodes whose record lapsed, not declared dead yet (``Deaths``)
        self._deaths = Deaths(metadata, lease_seconds, self._present, self._dead)
        self._watch = metadata.watch(NODES, self._changed)
        for key, value in metadata.scan(NODES):
            self._changed(key, value)

    def _changed(self, key: str, value: bytes | None) -> None:
        node_id = key[len(NODES):]
        if node_id == self.node_id:
            if value is None and self._on_self_lapsed is not None:
                self._on_self_lapsed()  # the others count this node dead: its work went elsewhere
            return
        if value is None:
            with self._lock:
                record = self.records.get(node_id)
                if record is not None:
                    self._lapsing.add(node_id)
            if record is not None:  # dead once declared so (unless it said it stopped, first), or back
                self._deaths.lapsed(node_id, record)
            return
        try:
            record = json.loads(value)
        except ValueError:
            return
        with self._lock:
            self._lapsing.discard(node_id)
            self.records[node_id] = record
            self._at_record[node_id] = dict(self._mine.get(node_id, {}))
        self._on_change()

    def _present(self, node_id: str) -> bool:
        """Whether ``node_id``'s record is there (again) since it lapsed."""
        with self._lock:
            return node_id in self.records and node_id not in self._lapsing

    def _dead(self, node_id: str, record: dict) -> None:
        """``node_id`` is declared dead (its dead marker is written): its work goes elsewhere."""
        with self._lock:
            gone = self.records.pop(node_id, None)
            self._lapsing.discard(node_id)
            self._mine.pop(node_id, None)
            self._at_record.pop(node_id, None)
        if gone is not None:
            self._on_dead(node_id)

    def record_death(self, record: dict, how: str) -> None:
        """List a node as dead for ``anyray status`` (the first node to say how it ended is kept)."""
        value = json.dumps({**record, "ended": how, "ended_at": time.time()}).encode()
        try:
            if self._metadata.compare_and_set(DEAD + record["node_id"], None, value):
                self._metadata.put(DEAD + record["node_id"], value, ttl=DEAD_SECONDS)
        except Exception:  # noqa: BLE001 - a listing only: the store may be down
            pass

    def _credit(self, node_id: str) -> dict:
        """What ``node_id`` has free, as far as this node can tell (under the lock)."""
        record = self.records[node_id]
        credit = dict(record["available"])
        for k, v in self._at_record.get(node_id, {}).items():
            credit[k] = credit.get(k, 0.0) + v
        for k, v in self._mine.get(node_id, {}).items():
            credit[k] = credit.get(k, 0.0) - v
        return credit

    def place(self, demand: dict) -> str | None:
        """Another node with ``demand`` free now, charged for it; None if none has."""
        with self._lock:
            best, best_cpus = None, -1.0
            for node_id in self.records:
                credit = self._credit(node_id)
                if fits(demand, credit) and credit.get("CPU", 0.0) > best_cpus:
                    best, best_cpus = node_id, credit.get("CPU", 0.0)
            if best is not None:
                mine = self._mine.setdefault(best, {})
                for k, v in demand.items():
                    mine[k] = mine.get(k, 0.0) + v
            return best

    def place_spread(self, demand: dict, here_free: dict, here_total: dict) -> str | None:
        """Where "SPREAD" work goes: the least-loaded node that has ``demand`` free now (the smallest share
        of its CPUs in use; nodes equally loaded take turns, so work that needs no CPU spreads too), charged
        for it when it is another node; None for this node (also when no node has it free: it then waits
        here or spills as any task does)."""
        with self._lock:
            loads = {}
            if fits(demand, here_free):
                loads[None] = _load(here_free, here_total)
            for node_id, record in self.records.items():
                credit = self._credit(node_id)
                if fits(demand, credit):
                    loads[node_id] = _load(credit, record["resources"])
            if not loads:
                return None
            least = min(loads.values())
            tied = sorted((n for n, load in loads.items() if load <= least + 1e-9), key=lambda n: n or "")
            best = tied[self._spread_turn % len(tied)]
            self._spread_turn += 1
            if best is not None:
                mine = self._mine.setdefault(best, {})
                for k, v in demand.items():
                    mine[k] = mine.get(k, 0.0) + v
            return best

    def free(self) -> dict[str, dict]:
        """What each other node has free now, as far as this node can tell."""
        with self._lock:
            return {node_id: self._credit(node_id) for node_id in self.records}

    def charge(self, node_id: str, demand: dict) -> None:
        """Work goes to ``node_id`` whatever it has free (its placement group bundle, or node affinity)."""
        with self._lock:
            mine = self._mine.setdefault(node_id, {})
            for k, v in demand.items():
                mine[k] = mine.get(k, 0.0) + v

    def fits(self, node_id: str, demand: dict) -> bool:
        """Whether ``node_id`` has ``demand`` free now, as far as this node can tell."""
        with self._lock:
            return node_id in self.records and fits(demand, self._credit(node_id))

    def returned(self, node_id: str, demand: dict) -> None:
        """Work charged to ``node_id`` is done (or never went): take the charge back."""
        with self._lock:
            charged = self._mine.get(node_id)
            if charged is not None:
                for k, v in demand.items():
                    if k in charged:
                        charged[k] = charged[k] - v
        self._on_change()

    def feasible_elsewhere(self, demand: dict) -> bool:
        with self._lock:
            return any(fits(demand, r["resources"]) for r in self.records.values())

    def alive(self, node_id: str) -> bool:
        return node_id == self.node_id or node_id in self.records

    def address(self, node_id: str) -> str | None:
        record = self.records.get(node_id)
        return record["address"] if record else None

    def link(self, node_id: str) -> PeerLink:
        """The link to ``node_id``, connecting on first use; ``ConnectionError`` if it is gone."""
        link = self._links.get(node_id)
        if link is not None and not link.closed:
            return link
        with self._lock:
            gate = self._connecting.setdefault(node_id, threading.Lock())
        with gate:
            link = self._links.get(node_id)
            if link is not None and not link.closed:
                return link
            address = self.address(node_id)
            if address is None:
                raise ConnectionError(f"Node {node_id} is not (or no longer) part of the cluster.")
            link = PeerLink.connect(address, self._token, self._closed, self._stream)
            self._links[node_id] = link
            return link

    def _stream(self, link: PeerLink, payload) -> None:
        if self.on_stream is not None:
            self.on_stream(link, payload)

    def existing_link(self, node_id: str) -> PeerLink | None:
        link = self._links.get(node_id)
        return link if link is not None and not link.closed else None

    def _closed(self, link: PeerLink) -> None:
        if self._links.get(link.node_id) is link:
            self._links.pop(link.node_id, None)

    def seal_record(self, record: dict) -> bytes:
        """``record`` signed with the cluster token: only a node of the cluster can write one that
        ``open_record`` accepts, so a value changed by anyone else in the metadata store is never unpickled."""
        body = m.dumps(record)  # method options may hold classes of a driver's __main__
        return hmac.new(self._token, body, hashlib.sha256).digest() + body

    def open_record(self, value: bytes) -> dict | None:
        mac, body = value[:32], value[32:]
        if not hmac.compare_digest(mac, hmac.new(self._token, body, hashlib.sha256).digest()):
            log.warning("ignored an actor record in the metadata store that no node of this cluster signed")
            return None
        return pickle.loads(body)

    def totals(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.records.values()]

    def close(self) -> None:
        self._deaths.close()
        self._watch.cancel()
        for link in list(self._links.values()):
            link.close()
        self.transfer.close()
