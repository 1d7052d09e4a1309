"""Objects that live on other nodes: where each lives, keeping it alive there, and pulling it here.

Every object has one home: where the task that made it was submitted, or
where it was put. A node that gets a reference to an object living elsewhere
(a task's dependency, a reference inside a value) records where it lives
(``expect``), keeps it alive there, and pulls it when something here waits
for it (``prefetch``): inline when small, else in chunks from the other
node's object server straight into this node's shared memory
(``peers.Transfer``). It lets go once nothing here refers to the object any
more (``freed``, a free listener of the store's).

A large result of a task this node handed on stays on the node that ran it
(``keep_remote``), and this node keeps the task's lineage (``lineage.py``):
to other nodes such a result lives here (``where``), and if the node holding
it dies, ``node_lost`` has the task run again instead of failing it.
"""

from __future__ import annotations

import logging

from anyray.exceptions import ObjectLostError
from anyray.object_ref import ObjectRef
from anyray.runtime import current_counter

from ..node import messages as m
from ..node.arena import Location
from .peers import PeerLink
from .view import ignore

log = logging.getLogger(__name__)


def object_ids(contained) -> list[bytes]:
    """The object ids among ``Contained`` references (actor handles left out)."""
    return [c.id for c in map(m.Contained._make, contained) if c.kind == m.OBJECT]


class RemoteObjects:
    """The node's object seam on a cluster: ``prefetch`` what a request or a task waits for, ``where`` an
    object lives, and objects read from other nodes sealed here (``receive``)."""

    def __init__(self, node_id: str, lock, store, tasks, ledger, threads):
        self.view = None  # the ClusterView, once attached
        self.node_id = node_id
        self._store = store
        self._lock = lock
        self._has_task, self._fail = tasks.has_task, ledger.fail
        self._has_tasks = lambda: bool(tasks.tasks)
        self._threads = threads  # where answers from other nodes are taken in (never a link's reader)
        self._remote: dict[bytes, str] = {}  # object id -> the node it lives on, while referenced here
        self._pulling: set[bytes] = set()
        self.lineage = None  # the node's Lineage, once attached (results kept on other nodes)
        store.add_free_listener(self.freed)

    def register(self, register) -> None:
        register("expect", self._op_expect)

    def where(self, oid: bytes) -> str:
        """The node to ask for ``oid``, as far as this node knows: itself unless it recorded another, and
        itself for the results it keeps the lineage of (it rebuilds them if their node dies)."""
        lineage = self.lineage
        if lineage is not None and lineage.owns(oid):
            return self.node_id
        return self._remote.get(oid, self.node_id)

    @property
    def remote(self) -> dict:
        """Object id -> the node it lives on, for the objects referenced here that live elsewhere."""
        return self._remote

    def keep_remote(self, oid: bytes, node_id: str) -> None:
        """Under the lock: ``oid``, a result of a task this node handed to ``node_id``, stays there (held
        there for this node already) until something here reads it."""
        self._remote[oid] = node_id

    # -- the node's seam -------------------------------------------------------------------
    def prefetch_deps(self, deps) -> None:
        """A task is submitted: start pulling its dependencies that live elsewhere (or will, once the tasks
        making them on other nodes are done)."""
        if self._remote or self.lineage is not None:
            self.fetch([r._id for r in deps])

    def prefetch(self, ids) -> None:
        """A ``get`` or ``wait`` asks for ``ids``: start pulling those that live elsewhere."""
        self.fetch(ids)

    def answer_peer(self, out: list) -> list:
        """A ``get``'s answer to another node: each object with where the references inside it live."""
        store = self._store
        answer = []
        for got in map(m.Got._make, out):
            oid, wire = got.oid, got.wire
            inner = getattr(store.entry(oid), "contained_refs", None) or ()
            contained = [m.ContainedAt.pack(c.kind, c.id, self.where(c.id) if c.kind == m.OBJECT else None)
                         for c in map(m.Contained._make, m.contained_ids(inner))]
            answer.append(m.GotWithRefs.pack(oid, wire, contained))
        return answer

    # -- where objects live ------------------------------------------------------------------
    def send_expect(self, link: PeerLink, ids) -> None:
        """Tell the node behind ``link`` where the objects ``ids`` live, ahead of work that reads them."""
        if ids:
            link.call("expect", {oid: self.where(oid) for oid in ids}, ignore)

    def _op_expect(self, worker, rid, where):
        for oid, node_id in where.items():
            self.expect(oid, node_id)

    def expect(self, oid: bytes, node_id: str) -> None:
        """``oid`` lives on ``node_id``: keep it alive there while this node refers to it."""
        if node_id == self.node_id or self._store.entry(oid) is not None or self._has_task(oid):
            return
        with self._lock:
            if oid in self._remote:
                return
            self._remote[oid] = node_id
        try:
            link = self.view.link(node_id)
        except (OSError, PermissionError):
            return  # gone: a wait for it fails when the node's lease lapses
        link.hold(oid)
        link.flush()

    def freed(self, ids) -> None:
        for oid in ids:
            with self._lock:  # ordered with receive's check: a pull that lands later is not sealed
                node_id = self._remote.pop(oid, None)
            if node_id is not None and self.view is not None:
                link = self.view.existing_link(node_id)
                if link is not None:
                    link.let_go(oid)

    def node_lost(self, node_id: str) -> None:
        """``node_id`` died: what lived only there is lost."""
        lost = [oid for oid, where in list(self._remote.items()) if where == node_id]
        for oid in lost:
            self._remote.pop(oid, None)
            self._pulling.discard(oid)
            if self._store.entry(oid) is not None:
                continue  # a copy was read here already
            lineage = self.lineage
            error = lineage.lost(oid, node_id) if lineage is not None else ObjectLostError(
                f"Object {oid.hex()} was lost: the node that held it ({node_id}) died.")
            if error is not None:  # else its task runs again
                self._fail([ObjectRef(oid)], error)

    # -- pulling -------------------------------------------------------------------------------
    def fetch(self, ids) -> None:
        """Start pulling each of ``ids`` that lives on another node and is not here yet (or, for a result of
        a task running on another node, once it is done there)."""
        lineage = self.lineage
        running = lineage is not None and self._has_tasks()
        if not self._remote and not running:
            return
        later = []
        for oid in ids:
            if running and self._has_task(oid):  # first: a result kept elsewhere is recorded before its task ends
                later.append(oid)
                continue
            node_id = self._remote.get(oid)
            if node_id is not None:
                self._pull(oid, node_id)
        if later:
            for oid, node_id in lineage.want(later):
                self._pull(oid, node_id)

    def _pull(self, oid: bytes, node_id: str) -> None:
        if self._store.entry(oid) is not None:
            return
        with self._lock:
            if oid in self._pulling:
                return
            self._pulling.add(oid)
        try:
            link = self.view.link(node_id)
        except (OSError, PermissionError):
            self._pulling.discard(oid)
            return
        link.call("get", m.Get.pack([oid], False, False),
                  lambda ok, value, link=link, node_id=node_id, oid=oid:
                  self._threads.submit(self._pulled, node_id, link, oid, ok, value))

    def _pulled(self, node_id: str, link: PeerLink, oid: bytes, ok: bool, value) -> None:
        try:
            if ok:
                for got in map(m.GotWithRefs._make, value):
                    self.receive(node_id, link, got.oid, got.wire, got.contained, pulled=True)
        except Exception:  # noqa: BLE001
            log.exception("receiving objects pulled from node %s failed", node_id)
        finally:
            self._pulling.discard(oid)

    def receive(self, node_id: str, link: PeerLink, oid: bytes, wire, contained, pulled: bool = False) -> None:
        """Seal here an object read from ``node_id``: its references first, then its bytes. A ``pulled``
        object no longer referenced here (freed while it travelled) is dropped instead."""
        if pulled and oid not in self._remote:
            if type(wire) is Location:
                link.unpin(oid)
            return
        counter = current_counter()
        refs = []
        for inner in map(m.ContainedAt._make, contained or ()):
            if inner.kind == m.OBJECT:
                self.expect(inner.id, inner.node or node_id)
                refs.append(ObjectRef(inner.id, None, counter))
        if type(wire) is not Location:
            if self._seal_received(oid, wire, refs, pulled) and pulled:
                self._read_home(oid, link)
            return
        store = self._store
        try:
            grant = store.reserve(wire.nbytes)
        except Exception as exc:  # noqa: BLE001 - the store is full: the object cannot come here
            link.unpin(oid)
            self._fail([ObjectRef(oid)], exc)
            return
        try:
            source = link.setup.get("object_address") or link.address  # its --object-manager-port, if fixed
            self.view.transfer.pull(source, wire, store.arena.receive_view(grant.offset, wire.nbytes))
        except Exception as exc:  # noqa: BLE001
            store.forget_grant(grant.offset)
            link.unpin(oid)
            self._fail([ObjectRef(oid)], ObjectLostError(f"Object {oid.hex()} could not be read from node "
                                                              f"{node_id}: {exc}"))
            return
        link.unpin(oid)
        if not self._seal_received(oid, wire._replace(offset=grant.offset), refs, pulled):
            store.forget_grant(grant.offset)
        elif pulled:
            self._read_home(oid, link)

    def _read_home(self, oid: bytes, link: PeerLink) -> None:
        """A result kept where its task ran was read here: here is its one copy from now on (the other
        node lets it go, and its lineage is no longer needed: it is lost only with its owner)."""
        lineage = self.lineage
        if lineage is None or not lineage.owns(oid):
            return
        with self._lock:
            if self._remote.pop(oid, None) is None:
                return
        link.let_go(oid)
        lineage.read_home(oid)

    def _seal_received(self, oid: bytes, wire, refs, pulled: bool) -> bool:
        with self._lock:
            if pulled and oid not in self._remote:
                return False
            self._store.seal_wire(oid, wire, refs)
            return True
