"""A cluster's placement groups as one node serves them: the records every node reads (``group_records``),
the groups this node places (``group_placer``), the bundles it holds (its ``host``), and where work
scheduled into a group goes.

Any node answers a driver's or a task's calls: ``create`` writes the group's record (this node owns it),
``remove`` marks it REMOVED by compare-and-set (every node holding a bundle of it gives the bundle back when
it sees that), ``ready``/``wait``/``table``/``find`` read the records, which every node watches. Work into a
group goes to the node of its bundle (``where``); while the group is not placed, it waits (``park``).

A node that dies takes its bundles with it: the group's owner marks them unplaced and the group RESCHEDULING,
and places them again; a group whose owner died is taken over by one other node (compare-and-set) when it is
detached, and removed with its job otherwise (its driver was connected to that node).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

from anyray import ids
from anyray.exceptions import TaskPlacementGroupRemoved
from anyray.executor import serialize_failure
from anyray.policy import fits
from anyray.serialization import serialize
from anyray.specs import RemoteFailure
from anyray.util.placement_group import PlacementGroup, PlacementGroupID

from ..node import messages as m
from .bundle_room import BundleRoom
from .group_placer import Placer
from .group_records import CREATED, GROUPS, PENDING, REMOVED, RESCHEDULING, GroupRecords, decode, new_record, table_row

log = logging.getLogger(__name__)

WAIT = "wait"  # ``where``: the group is not placed yet


def removed_error(group_hex: str) -> TaskPlacementGroupRemoved:
    return TaskPlacementGroupRemoved(f"The placement group {group_hex} corresponding to this task has been "
                                     f"removed.")


def job_hex(job) -> str | None:
    """A job id as records keep it."""
    if isinstance(job, tuple):
        job = job[0]
    return job.hex() if isinstance(job, bytes) else None if job is None else str(job)


class ClusterGroups:
    """The cluster's placement groups on one node. ``host`` holds this node's bundles (``reserve(record,
    {index: bundle}) -> bool``, ``release(group_hex, indexes or None)``, ``free()``, ``total()``); ``put(ref,
    serialized)`` seals a ref in this node's store."""

    def __init__(self, metadata, node_id: str, host, put):
        self.node_id = node_id
        self.records = GroupRecords(metadata)
        self.view = None  # the ClusterView, once attached
        self.host = host
        self._put = put
        self._lock = threading.Lock()
        self._changed_cond = threading.Condition(self._lock)
        self._cache: dict[str, dict] = {}          # group id hex -> its record, as last seen
        self._ready: dict[str, list] = {}          # ... -> pg.ready() refs to seal once it is created
        self._parked: dict[str, list] = {}         # ... -> callbacks of work waiting for it to be placed
        self._turns: dict[str, itertools.count] = {}  # ... -> round robin over its bundles for index -1
        self.room = BundleRoom()  # where work into any bundle finds room on other nodes
        self.placer = Placer(self)
        self._watch = metadata.watch(GROUPS, self._seen)
        for key, value in metadata.scan(GROUPS):
            self._seen(key, value)

    def register(self, register) -> None:
        register("pg_reserve", self._op_reserve)
        register("pg_release", self._op_release)

    # -- what the placer reads -----------------------------------------------------------------
    @staticmethod
    def now() -> float:
        return time.time()

    def owned(self, *states: str) -> list[dict]:
        with self._lock:
            mine = [r for r in self._cache.values() if r["owner"] == self.node_id and r["state"] in states]
        return sorted(mine, key=lambda r: r["created_at"])

    def free_now(self) -> dict[str, dict]:
        """Every live node's free resources, this node's first."""
        out = {self.node_id: self.host.free()}
        if self.view is not None:
            out.update(self.view.free())
        return out

    def totals(self) -> dict[str, dict]:
        out = {self.node_id: self.host.total()}
        if self.view is not None:
            out.update({r["node_id"]: r["resources"] for r in self.view.totals()})
        return out

    def reserve_here(self, record: dict, bundles: dict[int, dict]) -> bool:
        with self._lock:
            seen = self._cache.get(record["id"])
            if seen is not None and seen["state"] == REMOVED:
                return False
        return self.host.reserve(record, bundles)

    def release_here(self, group_hex: str, indexes) -> None:
        self.host.release(group_hex, indexes)

    def _op_reserve(self, worker, rid, args):
        msg = m.ReserveBundles._make(args)
        return self.reserve_here(msg.group, {i: msg.group["bundles"][i] for i in msg.indexes})

    def _op_release(self, worker, rid, args):
        msg = m.ReleaseBundles._make(args)
        self.release_here(msg.group_id, msg.indexes)

    # -- the port's answers --------------------------------------------------------------------
    def create(self, spec, job=None) -> bytes:
        group_id = ids.new_id()
        record = new_record(group_id, spec, self.node_id, job_hex(job))
        self.records.add(record)  # ValueError: the name is taken
        with self._lock:
            self._cache.setdefault(record["id"], record)
        self.placer.kick()
        return group_id

    def remove(self, group_id: bytes) -> None:
        self.records.update(group_id.hex(), lambda r: None if r["state"] == REMOVED else dict(r, state=REMOVED))
        record = self.records.get(group_id.hex())
        if record is not None:
            self._seen("", None, record)  # act on it now, not only when the watch tells

    def remove_job(self, job) -> None:
        """A driver ended: remove its job's groups that are not detached (made by it, or by its tasks anywhere)."""
        job = job_hex(job)
        with self._lock:
            ended = [r["id"] for r in self._cache.values()
                     if r["job"] == job and r["state"] != REMOVED
                     and r["lifetime"] != "detached"]
        for group_hex in ended:
            self.remove(bytes.fromhex(group_hex))

    def ready(self, group_id: bytes, ref) -> None:
        group_hex = group_id.hex()
        record = self._record(group_hex)
        with self._lock:
            if record is not None and record["state"] in (PENDING, RESCHEDULING):
                self._ready.setdefault(group_hex, []).append(ref)
                record = None
            elif record is None:
                record = {"id": group_hex, "state": REMOVED}
        if record is not None:
            self._seal(ref, record)

    def wait(self, group_id: bytes, timeout: float) -> bool:
        group_hex = group_id.hex()
        deadline = time.monotonic() + timeout
        record = self._record(group_hex)
        with self._lock:
            while True:
                record = self._cache.get(group_hex, record)
                if record is None or record["state"] == REMOVED:
                    raise ValueError(f"Placement group {group_hex} does not exist (it was removed).")
                if record["state"] == CREATED:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed_cond.wait(min(left, 1.0))

    def table(self, group_id: bytes | None) -> dict:
        if group_id is not None:
            record = self.records.get(group_id.hex())
            if record is None:
                raise ValueError(f"Placement group {group_id.hex()} does not exist on this cluster.")
            return table_row(record)
        return {r["id"]: table_row(r) for r in self.records.all()}

    def find(self, name: str, namespace: str) -> bytes | None:
        found = self.records.find(name, namespace)
        return bytes.fromhex(found) if found else None

    # -- where work into a group goes ----------------------------------------------------------
    def where(self, group_id: bytes, index: int, demand: dict | None = None, besides: str | None = None):
        """The node that work into bundle ``index`` (-1: any) of the group runs on, ``WAIT`` while the
        group is not placed, or a ``TaskPlacementGroupRemoved`` once it is removed. For -1: a node of a
        bundle that can hold ``demand`` (any placed bundle's if none can), other than ``besides`` (None
        when only ``besides`` holds one), in turns."""
        group_hex = group_id.hex()
        record = self._record(group_hex)
        if record is None or record["state"] == REMOVED:
            return removed_error(group_hex)
        nodes = record["nodes"]
        if index >= 0:
            return nodes[index] or WAIT
        placed = [n for n in nodes if n]
        if not placed:
            return WAIT
        if demand is not None:
            placed = [n for n, b in zip(nodes, record["bundles"]) if n and fits(demand, b)] or placed
            roomy = [n for n in dict.fromkeys(placed) if n != besides and self.room.has(self.view, record, n, demand)]
            if roomy:
                placed = roomy
            elif besides is not None:
                return None  # no other node has room either: it waits where it is
        if besides is not None:
            placed = [n for n in placed if n != besides]
            if not placed:
                return None
        if self.node_id in placed and len(set(placed)) == 1:
            return self.node_id
        with self._lock:
            turn = next(self._turns.setdefault(group_hex, itertools.count()))
        chosen = placed[turn % len(placed)]
        if demand and chosen != self.node_id:
            self.room.sent(group_hex, chosen, demand)
        return chosen

    def park(self, group_id: bytes, callback) -> None:
        """Call ``callback()`` once the group's bundles are placed (or it is removed)."""
        group_hex = group_id.hex()
        with self._lock:
            record = self._cache.get(group_hex)
            if record is None or record["state"] in (PENDING, RESCHEDULING):
                self._parked.setdefault(group_hex, []).append(callback)
                return
        callback()

    # -- changes -------------------------------------------------------------------------------
    def learn(self, record: dict) -> None:
        """``record`` is the store's current one (read or just written here): act on it, whatever the watch
        said or missed."""
        self._seen("", None, record)

    def catch_up(self) -> None:
        """Read again the records of the groups that ``ready()`` refs or work wait for here: a change the watch
        missed while it reconnected (Redis restarted, its connection dropped) still lets them go on."""
        with self._lock:
            waiting = [(g, self._cache.get(g)) for g in {*self._ready, *self._parked}]
        for group_hex, seen in waiting:
            record = self.records.get(group_hex)
            if record is not None and record != seen:
                self._seen("", None, record)

    def _record(self, group_hex: str) -> dict | None:
        with self._lock:
            record = self._cache.get(group_hex)
        if record is None:
            record = self.records.get(group_hex)
            if record is not None:
                with self._lock:
                    self._cache.setdefault(group_hex, record)
        return record

    def _seen(self, key: str, value: bytes | None, record: dict | None = None) -> None:
        """A record changed (the metadata watch), or this node changed it (``record``)."""
        if record is None:
            if value is None:
                with self._lock:
                    self._cache.pop(key[len(GROUPS):], None)
                return
            record = decode(value)
            if record is None:
                return
        group_hex = record["id"]
        with self._lock:
            self._cache[group_hex] = record
            self._changed_cond.notify_all()
            state = record["state"]
            refs = self._ready.pop(group_hex, []) if state in (CREATED, REMOVED) else []
            parked = self._parked.pop(group_hex, []) if state in (CREATED, REMOVED) else []
        if refs or parked or state == REMOVED:
            threading.Thread(target=self._settle, args=(record, refs, parked), daemon=True).start()
        if state in (PENDING, RESCHEDULING) and record["owner"] == self.node_id:
            self.placer.kick()

    def _settle(self, record: dict, refs: list, parked: list) -> None:
        if record["state"] == REMOVED:
            try:
                self.host.release(record["id"], None)
            except Exception:  # noqa: BLE001 - keep settling the rest
                log.exception("releasing the bundles of removed placement group %s failed", record["id"])
        for ref in refs:
            self._seal(ref, record)
        for callback in parked:
            try:
                callback()
            except Exception:  # noqa: BLE001
                log.exception("work waiting for placement group %s could not go on", record["id"])

    def _seal(self, ref, record: dict) -> None:
        if record["state"] == REMOVED:
            self._put(ref, serialize_failure(RemoteFailure(removed_error(record["id"]))))
        else:
            self._put(ref, serialize(PlacementGroup(PlacementGroupID(bytes.fromhex(record["id"])))))

    def node_lost(self, node_id: str) -> None:
        """``node_id`` died: its bundles are gone. Its groups' owners place them again; this node takes over
        the detached groups ``node_id`` owned (one node wins the compare-and-set) and removes the others."""
        with self._lock:
            touched = [r for r in self._cache.values() if r["state"] != REMOVED
                       and (r["owner"] == node_id or (r["owner"] == self.node_id and node_id in r["nodes"]))]
        for record in touched:
            if record["owner"] == node_id and record["lifetime"] != "detached":
                self.remove(bytes.fromhex(record["id"]))
                continue
            after = self.records.update(record["id"], lambda r: self._lose(r, node_id))
            if after is not None:
                self._seen("", None, after)  # known here at once: work into the lost bundles waits now
        self.placer.kick()

    def _lose(self, record: dict, node_id: str) -> dict | None:
        if record["state"] == REMOVED:
            return None
        if record["owner"] == node_id:
            record["owner"] = self.node_id
        elif record["owner"] != self.node_id:
            return None  # another node took it over first
        if node_id in record["nodes"]:
            record["nodes"] = ["" if n == node_id else n for n in record["nodes"]]
            if record["state"] == CREATED:
                record["state"] = RESCHEDULING
        return record

    def reconcile(self, unconfirmed_seconds: float) -> None:
        """Give back bundles held here that no group needs: of a group removed (a change this node's watch
        missed), or reserved for a placement that never made the group (its owner died meanwhile)."""
        now = time.monotonic()
        for group_hex, held in self.host.held().items():
            record = self.records.get(group_hex)
            if record is None or record["state"] == REMOVED:
                self.host.release(group_hex, None)
                continue
            stale = [i for i, since in held.items()
                     if record["nodes"][i] != self.node_id and now - since > unconfirmed_seconds]
            if stale:
                log.info("placement group %s: giving back bundles %s, reserved here but never confirmed",
                         group_hex, stale)
                self.host.release(group_hex, stale)

    def close(self) -> None:
        self.placer.close()
        self._watch.cancel()
