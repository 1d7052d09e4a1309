"""One process's link to the node that owns its objects and runs what it submits.

A worker of a node, and a driver connected to a node daemon, talk to the
node the same way (``messages``): every port call of the process's runtime
becomes a REQUEST (``RemoteScheduler``, ``RemoteStore``), and the answer a
RESPONSE. The thread that waits for an answer reads the connection itself,
one message at a time, so no reader thread hands answers over.

References held in the process are borrowed from the node: the process's
counters report each id's first reference and its last, and its views of
shared memory report when they are gone, so the node keeps what the process
can still read. A process on another machine (``setup["arena"]`` None) gets
every object inline, and sends every object inline.
"""

from __future__ import annotations

import collections
import itertools
import pickle
import threading
import time

import cloudpickle

from anyray.context import current_task
from anyray.exceptions import GetTimeoutError
from anyray.runtime import ReferenceCounter
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor

from . import messages as m
from . import metrics_link
from .arena import Arena, Location
from .framing import frame, spin_until_readable
from .store import pinned_views, to_wire

FLUSH_INTERVAL = 0.1  # seconds between sends of reference changes when nothing else goes out


class _Pending:
    """One request awaiting its RESPONSE: a bare lock to block on, and the answer."""

    __slots__ = ("lock", "ok", "value", "abandoned", "op")

    def __init__(self, op: str):
        self.op = op
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = True
        self.value = None
        self.abandoned = False


class BorrowCounter(ReferenceCounter):
    """A ReferenceCounter that tells the node when an id gets its first reference in this process."""

    def __init__(self, free, first):
        super().__init__(free)
        self._first = first

    def incref(self, object_id: bytes) -> None:
        with self._lock:
            n = self._counts.get(object_id)
            if n is None:
                self._first(object_id)
            self._counts[object_id] = (n or 0) + 1

    def new_refs(self, n: int) -> list:
        refs = super().new_refs(n)
        for ref in refs:  # new ids: no other thread knows them yet, so no lock is needed
            self._first(ref._id)
        return refs


class Interrupts:
    """How a linked process's main thread treats an interrupt while it talks to the node.

    The main thread flags each message it sends (``sending``) and each answer it waits for
    (``pumping``); an interrupt handler that finds a flag set holds the interrupt (``held``), and the
    link lands it (``land``) once the message is out or the answer in. This default is a driver's or
    a peer node's, which hold nothing back; a worker's (``worker_interrupts.TaskInterrupts``) cancels
    the task it runs."""

    def __init__(self):
        self.sending = False        # the main thread is sending a message
        self.pumping = False        # the main thread reads the connection for an answer
        self.held = False           # an interrupt came meanwhile
        self.helpers = 0            # threads other than main waiting for an answer
        self.helpers_lock = threading.Lock()
        self.reads_itself = False   # the main thread reads the connection all the time (a hosted actor's)

    def land(self) -> None:
        """Act on an interrupt held while a message went out or an answer came in."""

    def raise_pending(self) -> None:
        """Raise what the main thread must stop for, between two messages it reads for an answer."""


class Link:
    """The connection of one process to its node: requests, borrowed references, objects.

    Subclasses handle what the node sends besides answers (``_dispatch``)."""

    def __init__(self, conn, setup: dict):
        self.conn = conn
        self._fd = conn.fileno()
        self.setup = setup
        self.inline_max = setup["inline_max"]
        self.shared = setup.get("arena") is not None  # this process maps the node's shared memory
        self._send_lock = threading.Lock()
        self._refs: dict[bytes, int] = {}
        self._handles: dict[bytes, int] = {}
        self._unpins: collections.deque = collections.deque()
        self._requests: dict[int, _Pending] = {}
        self._request_ids = itertools.count(1)
        self._functions: dict[bytes, object] = {}
        self.exported: set[bytes] = set()  # function ids the node has the code of
        self._blobs: dict[bytes, bytes] = {}  # code being exported: sent, not yet known to be out
        self._arena: Arena | None = None
        self._read_lock = threading.Lock()  # held by the thread reading the connection
        # Re-entrant: a collection inside _take_refs may run a __del__ that notes a change (a generator's refs)
        self._changes_lock = threading.RLock()
        self._answer_lock = threading.Lock()
        self.interrupts = Interrupts()
        self.main_thread = threading.get_ident()
        self._last_send = time.monotonic()
        self.object_counter: ReferenceCounter | None = None
        self.handle_counter: ReferenceCounter | None = None

    def counters(self):
        """Factories for the runtime's counters (``Runtime(counters=...)``): references borrowed from the node."""
        def objects(free):
            self.object_counter = BorrowCounter(free, self.borrowed)
            return self.object_counter

        def handles(free):
            self.handle_counter = BorrowCounter(free, self.handle_borrowed)
            return self.handle_counter

        return objects, handles

    def _dispatch(self, msg: bytes) -> None:
        raise NotImplementedError

    def _recv(self) -> bytes:
        return self.conn.recv_bytes()

    # -- sending --------------------------------------------------------------
    def _take_refs(self):
        if not (self._refs or self._handles or self._unpins):
            return None
        with self._changes_lock:
            refs, self._refs = self._refs, {}
            handles, self._handles = self._handles, {}
        unpins = []
        while self._unpins:
            unpins.append(self._unpins.popleft())
        return m.RefChanges.pack(list(refs.items()), list(handles.items()), unpins)

    def send(self, tag: int, body) -> None:
        on_main = threading.get_ident() == self.main_thread
        interrupts = self.interrupts
        if on_main:  # a cancel (SIGINT's handler runs here) must not cut a message in half
            interrupts.sending = True
        try:
            with self._send_lock:  # reference changes and the message they precede stay in order
                payload = frame(tag, m.dumps(m.Envelope.pack(self._take_refs(), body)))
                self._last_send = time.monotonic()
                self.conn.send_bytes(payload)
        finally:
            if on_main:
                interrupts.sending = False
                if interrupts.held:  # a cancel came during the send: it lands now
                    interrupts.held = False
                    interrupts.land()

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            if not self._flush_once():
                return  # the node is gone

    def _flush_once(self) -> bool:
        """Send the reference changes noted since the last message, if it went out a while ago."""
        try:
            self.object_counter.drain()
            self.handle_counter.drain()
            if (self._refs or self._handles or self._unpins) and \
                    time.monotonic() - self._last_send >= FLUSH_INTERVAL:
                self.send(m.REFS, None)
            metrics_link.ship(self)  # ray.util.metrics recorded here, to the node's /metrics
        except (OSError, ConnectionError):
            return False
        return True

    # reference changes; the counters call these under their own locks, so they only record
    def borrowed(self, oid: bytes) -> None:
        self.note("_refs", oid, 1)

    def released(self, oid: bytes) -> None:
        # Only if not referenced again since its count reached zero: then the +1 stands.
        self.object_counter.if_unreferenced(oid, lambda: self.note("_refs", oid, -1))

    def handle_borrowed(self, actor_id: bytes) -> None:
        self.note("_handles", actor_id, 1)

    def handle_released(self, actor_id: bytes) -> None:
        self.handle_counter.if_unreferenced(actor_id, lambda: self.note("_handles", actor_id, -1))

    def note(self, table: str, key: bytes, sign: int) -> None:
        """Record a first reference (+1) or a last one going (-1) to ``key`` in ``table`` ("_refs": objects,
        "_handles": actors); the last change of a batch counts."""
        with self._changes_lock:  # the table is swapped for a fresh one when a message takes it
            getattr(self, table)[key] = sign

    # -- requests to the node -------------------------------------------------
    def request(self, op: str, args, timeout: float | None = None):
        """Ask the node and wait for its answer; raise GetTimeoutError past ``timeout``.

        The main thread reads the answer off the connection itself (handling whatever else arrives
        first, a cancel of its task included); other threads wait for whoever reads."""
        pending = _Pending(op)
        rid = next(self._request_ids)
        self._requests[rid] = pending
        on_main = threading.get_ident() == self.main_thread
        interrupts = self.interrupts
        if on_main:
            interrupts.pumping = True
        try:
            self.send(m.REQUEST, m.Request.pack(rid, op, args))
            answered = self._pump(pending, timeout) if on_main else self._wait(pending, timeout)
        except BaseException:
            self._abandon(rid, pending)
            raise
        finally:
            if on_main:
                interrupts.pumping = False
                if interrupts.held:  # a cancel came while this thread waited: it lands now
                    interrupts.held = False
                    try:
                        interrupts.land()
                    except BaseException:
                        self._abandon(rid, pending)  # nobody reads the answer: release what it pinned
                        raise
        if not answered:
            self._abandon(rid, pending)
            raise GetTimeoutError(f"{op} timed out after {timeout} s")
        if not pending.ok:
            raise pending.value
        return pending.value

    def _pump(self, pending: _Pending, timeout: float | None) -> bool:
        """The main thread waits for an answer by reading the connection itself; a helper thread of
        the task may be reading just now, one message at a time, so the lock is taken per message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn, answered, interrupts = self.conn, pending.lock, self.interrupts
        while not answered.acquire(False):
            interrupts.raise_pending()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if not self._read_lock.acquire(timeout=0.005):
                continue
            try:
                if spin_until_readable(self._fd) or \
                        conn.poll(left if left is not None else None if interrupts.helpers == 0 else 0.005):
                    self._dispatch(self._recv())
            finally:
                self._read_lock.release()
        return True

    def _wait(self, pending: _Pending, timeout: float | None) -> bool:
        """A thread other than main waits for its answer; in a task's process, where the main thread
        runs user code, it reads for itself, one message at a time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        conn, answered, interrupts = self.conn, pending.lock, self.interrupts
        if interrupts.reads_itself:  # a threaded or async actor: the main thread reads all the time
            return answered.acquire(timeout=-1 if deadline is None else max(deadline - time.monotonic(), 0))
        with interrupts.helpers_lock:
            interrupts.helpers += 1
        try:
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if answered.acquire(timeout=0.005 if left is None else max(min(0.005, left), 0)):
                    return True
                if left is not None and left <= 0:
                    return False
                if self._read_lock.acquire(False):
                    try:
                        if conn.poll(0.005):
                            self._dispatch(self._recv())
                    finally:
                        self._read_lock.release()
        finally:
            with interrupts.helpers_lock:
                interrupts.helpers -= 1

    def _abandon(self, rid: int, pending: _Pending) -> None:
        """Nobody waits for this answer any more: the node takes back the CPUs it lent for it, and
        the answer, when it comes, is released unread."""
        with self._answer_lock:
            pending.abandoned = True
            answered = rid not in self._requests and pending.value is not None
        if answered:
            self._release_answer(pending)  # answered just now: nobody will read it
        try:
            self.tell("abandon", rid)
        except OSError:
            pass

    def tell(self, op: str, args) -> None:
        """A request that wants no answer."""
        self.send(m.REQUEST, m.Request.pack(0, op, args))

    def _on_response(self, payload) -> None:
        answer = m.Response._make(pickle.loads(payload))
        with self._answer_lock:
            pending = self._requests.pop(answer.rid, None)
            if pending is None:
                return
            pending.ok, pending.value = answer.ok, answer.value
            abandoned = pending.abandoned
        if abandoned:
            self._release_answer(pending)
        else:
            pending.lock.release()

    def _release_answer(self, pending: _Pending) -> None:
        if pending.op == "get" and pending.ok:
            for key, wire in pending.value:
                if type(wire) is Location:
                    self._unpins.append(key)

    # -- objects ----------------------------------------------------------------
    @property
    def arena(self) -> Arena:
        if self._arena is None:
            self._arena = Arena.attach(self.setup["arena"], writable=True)
        return self._arena

    def from_wire(self, key: bytes, wire) -> SerializedObject:
        if type(wire) is Location:
            unpins = self._unpins
            return pinned_views(self.arena, wire, lambda: unpins.append(key))
        data, buffers = wire  # an Inline (unpacked: this runs once per object)
        return SerializedObject(data, buffers)

    def to_node(self, obj: SerializedObject):
        """The wire form of an object going to the node: large ones are written into a granted range."""
        if obj.nbytes < self.inline_max or not self.shared:
            return to_wire(obj)
        grant = self.request("alloc", Location.of(obj).nbytes)
        return self.arena.write(grant, obj)

    def get(self, ids: list[bytes], timeout: float | None) -> list[SerializedObject]:
        blocking = current_task.get() is not None
        if timeout == 0:  # the node answers at once, with the objects or a GetTimeoutError
            answer = self.request("get", m.Get.pack(ids, False, True))
        else:
            answer = self.request("get", m.Get.pack(ids, blocking, False), timeout)
        return [self.from_wire(key, wire) for key, wire in answer]

    def export(self, descriptor: FunctionDescriptor) -> bytes | None:
        """The pickled code of a function or class the node does not have yet, else None.

        The node has it once a message that carried it is out (see :meth:`exported_with`): until then
        every caller sends it, or a thread whose message overtook the first one's would send none."""
        fn_id = descriptor.function_id
        if fn_id in self.exported:
            return None
        blob = self._blobs.get(fn_id)
        if blob is None:
            self._functions[fn_id] = descriptor.target  # the node may send it back here
            blob = self._blobs[fn_id] = cloudpickle.dumps(descriptor.target, 5)
        return blob

    def exported_with(self, descriptor: FunctionDescriptor, blob: bytes | None) -> None:
        """A message that carried ``blob`` (from :meth:`export`) is sent: later ones need not."""
        if blob is not None:
            self.exported.add(descriptor.function_id)
            self._blobs.pop(descriptor.function_id, None)

