"""The ``PlacementGroupPort`` of a runtime whose node is elsewhere (a worker's): requests to the node.

The node serves ``placement_group`` requests (``groups.GroupRequests.serve``). Waiting is done here, by
asking the node for the group's state, so that no request holds the node's reader: ``wait`` polls, and
``ready`` seals its ref from a thread of this process once the group is created or removed.
"""

from __future__ import annotations

import threading
import time

from anyray.executor import serialize_failure
from anyray.serialization import serialize
from anyray.specs import RemoteFailure
from anyray.util.placement_group import PlacementGroup, PlacementGroupID

from ..common.placement_groups import CREATED, REMOVED, current_group_id, removed_error
from . import messages as m
from .remote_ports import RemoteScheduler, RemoteStore

POLL = 0.05  # seconds between two looks at a pending group's state


class RemoteGroups:
    places_groups = True
    node: object

    def _request(self, op: str, group_id: bytes | None = None, spec=None, name: str | None = None,
                 namespace: str | None = None):
        return self.node.request("placement_group", m.GroupOp.pack(op, group_id, spec, name, namespace))

    def create_placement_group(self, spec) -> bytes:
        return self._request("create", spec=spec)

    def remove_placement_group(self, group_id: bytes) -> None:
        self._request("remove", group_id)

    def placement_group_table(self, group_id: bytes | None) -> dict:
        return self._request("table", group_id)

    def find_placement_group(self, name: str, namespace: str) -> bytes | None:
        return self._request("find", name=name, namespace=namespace)

    def current_placement_group(self) -> bytes | None:
        return current_group_id()

    def wait_placement_group(self, group_id: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            state = self.placement_group_table(group_id)["state"]
            if state == REMOVED:
                raise ValueError(f"Placement group {group_id.hex()} does not exist (it was removed).")
            if state == CREATED:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL, left))

    def placement_group_ready(self, group_id: bytes, ref) -> None:
        store = RemoteStore(self.node)

        def settle():
            try:
                while not self.wait_placement_group(group_id, 1.0):
                    pass
                obj = serialize(PlacementGroup(PlacementGroupID(group_id)))
            except ValueError:
                obj = serialize_failure(RemoteFailure(removed_error(group_id)))
            except Exception:  # noqa: BLE001 - the node went away: nothing is left to seal into
                return
            store.put(ref, obj)

        state = self.placement_group_table(group_id)["state"]
        if state != "PENDING":
            settle()
            return
        threading.Thread(target=settle, name="anyray-pg-ready", daemon=True).start()


class GroupsRemoteScheduler(RemoteGroups, RemoteScheduler):
    """A worker's scheduler on a node that places groups (``setup["places_groups"]``)."""
