"""Placing a cluster's placement groups: the node that owns a group (the one its driver is connected to, or
the node that took it over) plans its bundles over the nodes (``planner.plan``) and reserves them, each node
against its own resources; the group is CREATED only once every node has confirmed its bundles.

A reservation that fails anywhere (no room after a race with another driver, a node that dies or does not
answer) gives back what the other nodes reserved for it, and the group stays PENDING (RESCHEDULING after it
lost a node) and is tried again: when a node's resources change, when work comes back, and every
``RETRY_SECONDS``. The record's state changes by compare-and-set, so a group removed meanwhile is never made
CREATED: its owner gives back what it had just reserved. Each try starts from the record in the store, not
the copy the watch keeps: a change the watch missed (while it reconnected) would otherwise have a group placed
already placed again, and the bundles it holds given back.
"""

from __future__ import annotations

import logging
import threading

from ..node import messages as m
from .group_records import CREATED, PENDING, RESCHEDULING
from .planner import plan

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
RESERVE_SECONDS = 10.0  # how long a node may take to answer a reservation before it counts as failed
UNCONFIRMED_SECONDS = 3 * RESERVE_SECONDS  # a bundle reserved this long ago for a group not placed here is let go


class Placer:
    """Places the groups this node owns, on a thread of its own (``kick`` it when something changed)."""

    def __init__(self, groups):
        self._groups = groups
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="anyray-placement-groups", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait(RETRY_SECONDS)
            self._wake.clear()
            if self._closed:
                return
            try:
                self.place_all()
                self._groups.catch_up()
                self._groups.reconcile(UNCONFIRMED_SECONDS)
            except Exception:  # noqa: BLE001 - the metadata store may be down for a while: try again later
                log.exception("placing placement groups failed; trying again")

    def place_all(self) -> None:
        groups = self._groups
        for record in groups.owned(PENDING, RESCHEDULING):
            if self._closed:
                return
            self._place(record)

    def _place(self, record: dict) -> None:
        groups = self._groups
        current = groups.records.get(record["id"])  # the store's: the watch may have missed a change
        if current is None:
            return
        if current != record:
            groups.learn(current)
            if current["state"] not in (PENDING, RESCHEDULING) or current["owner"] != groups.node_id:
                return  # placed already (placing it again would give back the bundles it holds), or removed
            record = current
        missing = [i for i, node in enumerate(record["nodes"]) if not node]
        if not missing:
            return
        bundles = [record["bundles"][i] for i in missing]
        strategy = record["strategy"]
        holding = [n for n in record["nodes"] if n]
        free = groups.free_now()
        if strategy == "STRICT_SPREAD":  # a node of its own for each bundle: not one that holds another
            free = {n: avail for n, avail in free.items() if n not in holding}
        elif holding and strategy in ("STRICT_PACK", "PACK"):  # the nodes already used first
            free = {**{n: free[n] for n in holding if n in free}, **free}
        nodes = plan(bundles, strategy, free)
        if nodes is None:
            totals = groups.totals()
            if strategy == "STRICT_SPREAD":
                totals = {n: t for n, t in totals.items() if n not in holding}
            state = "INFEASIBLE" if plan(bundles, strategy, totals) is None else "NO_RESOURCES"
            if record.get("scheduling_state") != state:
                groups.records.update(record["id"], lambda r: dict(r, scheduling_state=state)
                                      if r["state"] in (PENDING, RESCHEDULING) else None)
            return
        wanted: dict[str, dict[int, dict]] = {}
        for index, node in zip(missing, nodes):
            wanted.setdefault(node, {})[index] = record["bundles"][index]
        ok, reserved = self._reserve(record, wanted)
        if not ok:
            self._give_back(record["id"], reserved)
            groups.records.update(record["id"], lambda r: dict(r, attempts=r.get("attempts", 0) + 1)
                                  if r["state"] in (PENDING, RESCHEDULING) else None)
            self.kick_later()
            return
        placed = dict(zip(missing, nodes))

        def created(r: dict) -> dict | None:
            if r["state"] not in (PENDING, RESCHEDULING) or r["owner"] != groups.node_id:
                return None
            new_nodes = list(r["nodes"])
            for index, node in placed.items():
                new_nodes[index] = node
            return dict(r, state=CREATED, nodes=new_nodes, placed_at=r.get("placed_at") or groups.now(),
                        attempts=r.get("attempts", 0) + 1, scheduling_state="FINISHED")

        after = groups.records.update(record["id"], created)
        if after is None or after["state"] != CREATED or any(after["nodes"][i] != n for i, n in placed.items()):
            self._give_back(record["id"], wanted)  # removed (or taken over) meanwhile
        else:
            groups.learn(after)  # known here at once, not only once the watch tells (it may miss it)

    def kick_later(self) -> None:
        """A reservation lost a race: try again after a pause (not at once, or two owners could keep
        taking the same node's last resources from each other)."""
        timer = threading.Timer(RETRY_SECONDS / 2, self.kick)
        timer.daemon = True
        timer.start()

    def _reserve(self, record: dict, wanted: dict[str, dict[int, dict]]) -> tuple[bool, dict]:
        """Ask every node in ``wanted`` to reserve its bundles at once: (whether all confirmed, what to give
        back if the group is not made CREATED after all)."""
        groups = self._groups
        lock = threading.Lock()
        done = threading.Event()
        confirmed: list[str] = []
        left = [len(wanted)]

        def answered(node: str, ok: bool, value) -> None:
            with lock:
                if ok and value is True:
                    confirmed.append(node)
                left[0] -= 1
                if not left[0]:
                    done.set()

        for node, bundles in wanted.items():
            if node == groups.node_id:
                answered(node, True, groups.reserve_here(record, bundles))
                continue
            try:
                groups.view.link(node).call("pg_reserve", m.ReserveBundles.pack(record, sorted(bundles)),
                                            lambda ok, value, node=node: answered(node, ok, value))
            except (OSError, PermissionError) as exc:
                log.info("could not ask node %s to reserve bundles of %s: %s", node, record["id"], exc)
                answered(node, False, exc)
        finished = done.wait(RESERVE_SECONDS)
        if not finished:
            log.warning("a node did not answer a reservation of placement group %s in time", record["id"])
        with lock:  # after a timeout a late answer may still reserve: every node asked gives back
            return finished and len(confirmed) == len(wanted), wanted if not finished else \
                {n: wanted[n] for n in confirmed}

    def _give_back(self, group_hex: str, reserved: dict[str, dict[int, dict]]) -> None:
        groups = self._groups
        for node, bundles in reserved.items():
            if node == groups.node_id:
                groups.release_here(group_hex, sorted(bundles))
                continue
            link = groups.view.existing_link(node) if groups.view is not None else None
            if link is not None:
                link.call("pg_release", m.ReleaseBundles.pack(group_hex, sorted(bundles)), _ignore)


def _ignore(ok, value) -> None:
    if not ok:
        log.info("a node could not release placement group bundles: %r", value)
