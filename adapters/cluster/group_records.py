"""A cluster's placement groups as records in the metadata store, which every node and driver reads.

``GROUPS`` + group id (hex) -> JSON of the group: its spec, its state (PENDING, CREATED, RESCHEDULING,
REMOVED), the node of each bundle ('' while unplaced), the node that places it (``owner``) and the job that
made it. A record changes only by compare-and-set (``update``), so two writers never lose each other's
change. ``NAMES`` + namespace + name -> the id of the live group of that name: claimed by compare-and-set, so
two drivers cannot both take a name. Removed groups stay listed for ``REMOVED_SECONDS``.

Records are JSON, never pickles: a record changed by anyone else in the store is only data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

GROUPS = "placement_groups/"
NAMES = "placement_group_names/"
REMOVED_SECONDS = 3600.0  # how long a removed group stays in the table
PENDING, CREATED, RESCHEDULING, REMOVED = "PENDING", "CREATED", "RESCHEDULING", "REMOVED"
CAS_TRIES = 100


def new_record(group_id: bytes, spec, owner: str, job: str | None) -> dict:
    """The record of a group just made from ``spec`` (a ``PlacementGroupSpec``) by node ``owner``."""
    return {"id": group_id.hex(), "name": spec.name, "namespace": spec.namespace, "strategy": spec.strategy,
            "bundles": [dict(b) for b in spec.bundles], "lifetime": spec.lifetime, "owner": owner, "job": job,
            "state": PENDING, "nodes": [""] * len(spec.bundles), "created_at": time.time(), "placed_at": None,
            "attempts": 0, "scheduling_state": "QUEUED"}


def _name_key(namespace: str, name: str) -> str:
    return NAMES + namespace.encode().hex() + "/" + name.encode().hex()  # any characters, in Redis and etcd


def _encode(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True).encode()


class GroupRecords:
    """Reads and writes the group records of one metadata store."""

    def __init__(self, metadata):
        self.metadata = metadata

    def get(self, group_hex: str) -> dict | None:
        value = self.metadata.get(GROUPS + group_hex)
        return decode(value)

    def all(self) -> list[dict]:
        out = []
        for _key, value in self.metadata.scan(GROUPS):
            record = decode(value)
            if record is not None:
                out.append(record)
        return sorted(out, key=lambda r: r["created_at"])

    def add(self, record: dict) -> None:
        """Write a new group's record; ``ValueError`` if its name is taken by a live group of its namespace.

        The record is written before the name is claimed, so a name's holder always has a record: one that
        has none is gone for good (removed, then expired), never a group still being created."""
        key = GROUPS + record["id"]
        self.metadata.put(key, _encode(record))
        if record["name"] and not self._claim(record):
            self.metadata.delete(key)
            raise ValueError(f"Failed to create placement group: name {record['name']!r} already exists in "
                             f"namespace {record['namespace']!r} (remove that group first, or pick another name).")

    def _claim(self, record: dict) -> bool:
        key = _name_key(record["namespace"], record["name"])
        mine = record["id"].encode()
        for _ in range(CAS_TRIES):
            holder = self.metadata.get(key)
            if holder is None:
                if self.metadata.compare_and_set(key, None, mine):
                    return True
                continue
            held = self.get(holder.decode())
            if held is not None and held["state"] != REMOVED:
                return False
            if self.metadata.compare_and_set(key, holder, mine):  # its group is gone: the name is free
                return True
        return False

    def find(self, name: str, namespace: str) -> str | None:
        """The id (hex) of the live group named ``name`` in ``namespace``."""
        holder = self.metadata.get(_name_key(namespace, name))
        if holder is None:
            return None
        record = self.get(holder.decode())
        return record["id"] if record is not None and record["state"] != REMOVED else None

    def update(self, group_hex: str, change: Callable[[dict], dict | None]) -> dict | None:
        """Apply ``change`` (a copy of the record -> the new record, or None to leave it) by compare-and-set,
        again on a conflict; the record as it is afterwards (None if there is none)."""
        key = GROUPS + group_hex
        for _ in range(CAS_TRIES):
            value = self.metadata.get(key)
            record = decode(value)
            if record is None:
                return None
            new = change(dict(record))
            if new is None:
                return record
            if new["state"] == REMOVED and record["state"] != REMOVED:
                new["removed_at"] = time.time()
            encoded = _encode(new)
            if self.metadata.compare_and_set(key, value, encoded):
                if new["state"] == REMOVED:
                    self._removed(new, encoded)
                return new
        raise RuntimeError(f"placement group {group_hex}: its record kept changing under {CAS_TRIES} updates")

    def _removed(self, record: dict, encoded: bytes) -> None:
        if record["name"]:
            self.metadata.compare_and_set(_name_key(record["namespace"], record["name"]), record["id"].encode(), None)
        self.metadata.put(GROUPS + record["id"], encoded, ttl=REMOVED_SECONDS)


def decode(value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "id" in record else None


def table_row(record: dict) -> dict:
    """Ray's ``placement_group_table`` entry for a group record."""
    state = record["state"]
    placed_at = record.get("placed_at")
    return {"placement_group_id": record["id"], "name": record["name"],
            "bundles": {i: dict(b) for i, b in enumerate(record["bundles"])},
            "bundles_to_node_id": dict(enumerate(record["nodes"])),
            "strategy": record["strategy"], "state": state,
            "stats": {"end_to_end_creation_latency_ms":
                      (placed_at - record["created_at"]) * 1000 if placed_at else 0.0,
                      "scheduling_attempt": record.get("attempts", 0),
                      "scheduling_state": "FINISHED" if state == CREATED else "REMOVED" if state == REMOVED
                      else record.get("scheduling_state", "QUEUED")}}


def listing(record: dict) -> dict:
    """A group as ``anyray list placement-groups`` shows it."""
    nodes = sorted({n for n in record["nodes"] if n})
    return {"placement_group_id": record["id"], "name": record["name"], "namespace": record["namespace"],
            "state": record["state"], "strategy": record["strategy"],
            "bundles": " ".join(",".join(f"{k}:{v:g}" for k, v in sorted(b.items())) for b in record["bundles"]),
            "nodes": ",".join(n[:8] for n in nodes), "detached": record["lifetime"] == "detached"}
