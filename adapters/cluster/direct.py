"""Direct actor calls, the driver's side: a sync actor's calls go straight to its process, not through
the node (``direct_host.py`` is the node's side, ``node/worker_direct.py`` the actor process's).

Today's path for an actor call is driver -> node daemon -> actor process and back: four thread wake-ups
in three processes. A direct call is two, as on the multiprocess backend:

- The driver asks its node where an actor takes direct calls ("direct_actor", once per actor, again
  at most every ``LOOKUP_SECONDS`` while the answer is "later"). The node says so only for a sync actor
  (``max_concurrency`` 1, no concurrency groups, no retries) on this machine, alive, with none of this
  driver's node-path calls to it in flight. The driver connects to the process's Unix socket (in the
  node's 0700 session directory) and proves the key derived from the cluster token.
- A call goes direct when it has no dependencies, no references inside its arguments, small arguments,
  no stream, no concurrency group and no retries; every other call goes through the node, as before.
  After one does, the actor's calls take the node's path until the node says they are done (a direct
  call could overtake them); the other way round needs nothing: the actor process takes what its
  direct sockets hold before a message from the node.
- Results land in the driver's store cache; ``get`` and ``wait`` read the actor's socket on the thread
  that waits. A large result, or one holding references, the actor process puts to the node, and the
  driver reads it there.
- A result that leaves the driver (a dependency, a reference inside arguments or inside a put) is put
  to the node first, on the node's connection ahead of the message that passes it on; one still
  coming is put when it comes (a helper thread reads while any such is pending).
- The socket closing (the process killed or exited) fails the calls still pending with
  ``ActorDiedError`` (they have no retries: as the node fails calls in flight), with the cause the node
  gives; later calls go through the node, which restarts the actor or says it is dead. ``kill``
  stops the direct path first, so a call made after it queues behind the kill at the node.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import select
import socket
import sys
import termios
import threading
import time
import weakref
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge
from multiprocessing.connection import wait as wait_any

from anyray.exceptions import ActorDiedError, GetTimeoutError
from anyray.executor import serialize_failure
from anyray.generators import stream_of
from anyray.serialization import SerializedObject
from anyray.specs import RemoteFailure

from ..node import messages as m
from ..node.framing import frame, spin_until_readable
from ..node.remote_ports import call_options
from ..node.store import to_wire
from ..node.worker_direct import ADMITTED, HANDSHAKE_SECONDS
from .direct_host import direct_key

LOOKUP_SECONDS = 0.05      # the first wait before asking the node again about an actor that is "later"
LOOKUP_MAX_SECONDS = 1.0   # the longest (the wait doubles while the answer stays "later")
CAUSE_SECONDS = 3.0        # how long a driver waits for the node to say why an actor's process went
ARGS_MAX = 32 * 1024       # larger arguments go through the node (a send never fills the socket)
UNREAD_MAX = 256 * 1024    # answers unread beyond which a helper thread reads them while calls go out
SLICE = 0.005              # a reader's wait between looks at whether another thread got its answer


TCP = "tcp://"              # a process's address on another machine (or of another node): tcp://host:port/<dir>
KEEPALIVE = [(getattr(socket, name), value) for name, value in  # probes after 10 s idle, 3 of them 5 s apart
             (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)) if hasattr(socket, name)]
SWITCH = "ANYRAY_DIRECT_CALLS"  # on unless "0" in the driver's environment: then every call takes the node's path


class Socket:
    """A direct socket to one actor process, and the calls sent on it without a result yet."""

    __slots__ = ("actor_id", "conn", "fd", "pid", "path", "send_lock", "read_lock", "pending", "closed", "poller",
                 "tcp")
    leased = False  # a socket to a worker lent to this driver (leases.py)
    parked = False  # leases.PARKED: the results of a task waiting here for its dependencies

    def __init__(self, actor_id: bytes, conn: Connection, pid: int, path: str):
        self.actor_id, self.conn, self.fd, self.pid, self.path = actor_id, conn, conn.fileno(), pid, path
        self.send_lock = threading.Lock()
        self.read_lock = threading.Lock()
        self.pending: dict[bytes, list] = {}  # task id -> its return ids
        self.closed = False
        self.poller = select.poll()  # whether a call can go out without waiting
        self.poller.register(self.fd, select.POLLOUT)
        self.tcp = path.startswith(TCP)


def _queued(sock: Socket, request: int) -> int:
    """A byte count the kernel keeps for ``sock`` (``FIONREAD``: unread; ``TIOCOUTQ``: sent, not yet
    acknowledged); 0 once another thread closed it."""
    try:
        count = fcntl.ioctl(sock.fd, request, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(count, sys.byteorder)


def unsent(sock: Socket) -> int:
    """Bytes written on ``sock`` that the other end's machine has not acknowledged yet (0 once closed)."""
    return _queued(sock, termios.TIOCOUTQ)


def backed_up(sock: Socket) -> bool:
    """Whether the actor process's answers pile up unread (it may block on one nobody reads)."""
    return _queued(sock, termios.FIONREAD) > UNREAD_MAX


def eligible(spec) -> bool:
    """Whether an actor call may go straight to the actor's process (see the module's docstring)."""
    options = spec.options
    args = spec.args
    return (not spec.deps and not args.contained_refs and args.nbytes < ARGS_MAX and stream_of(options) is None
            and options.get("concurrency_group") is None and not options.get("max_task_retries"))


class _Answers:
    """The reading half of ``DirectCalls``: the answers of direct calls, read by the thread that waits for
    them (or a helper thread), settled into the store's cache, and the calls of a socket that closed."""

    link = None
    cache: dict
    lock: threading.Lock
    _sockets: dict
    _retry: dict
    live: set
    _promote: set
    _unwanted: set
    waiting: dict
    here: set
    helper = None
    closed = False

    def collect(self, ids, deadline: float | None) -> None:
        """Wait until the results among ``ids`` of direct calls are here (or at the node); raise
        ``GetTimeoutError`` past ``deadline``."""
        waiting = self.waiting
        if len(self.live) > 1 and self.helper is None:
            mine = {id(waiting.get(oid)) for oid in ids}
            if any(s.pending for s in list(self.live) if id(s) not in mine):
                self.read_in_background()  # other actors' answers are read meanwhile
        for oid in ids:
            while oid in waiting:
                sock = waiting.get(oid)
                if sock is None:
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise GetTimeoutError("get() timed out: an actor call's result is not ready. Raise the "
                                          "timeout, or use wait() to take what is ready.")
                if sock.parked:  # a task waiting here for its dependencies: they come on any busy socket
                    self.pump(self.busy(), left, lambda oid=oid: oid not in waiting, bounded=True)
                else:
                    self.pump([sock], left, lambda oid=oid: oid not in waiting)

    def wait(self, ids, num_returns: int, deadline: float | None) -> set:
        """Of ``ids`` (all direct calls' results), those that came, once ``num_returns`` have or by ``deadline``."""
        waiting = self.waiting
        while True:
            ready = {oid for oid in ids if oid not in waiting}
            left = None if deadline is None else deadline - time.monotonic()
            if len(ready) >= num_returns or (left is not None and left <= 0):
                return ready
            socks = list({id(s): s for s in (waiting.get(oid) for oid in ids) if s is not None}.values())
            parked = any(s.parked for s in socks)
            if parked:
                socks = self.busy()
            if socks or parked:
                self.pump(socks, left, lambda: sum(oid not in waiting for oid in ids) >= num_returns, parked)

    def busy(self) -> list:
        """The sockets with answers to come."""
        return [s for s in list(self.live) if s.pending and not s.closed]

    def pump(self, socks: list, left: float | None, done, bounded: bool = False) -> None:
        """Read one answer from the first of ``socks`` that has one (waiting at most ``left`` seconds), unless
        ``done()`` once this thread may read (another thread may have read what it waits for meanwhile).
        ``bounded``: look again within ``SLICE`` (what is waited for may move to another socket)."""
        if not socks:
            time.sleep(SLICE)  # answered meanwhile by another thread: settled in a moment
            return
        if len(socks) == 1 and not bounded:
            sock = socks[0]
            if not sock.read_lock.acquire(timeout=SLICE):
                return
            try:
                if sock.closed or done():
                    return
                timeout = left if self.helper is None else SLICE if left is None else min(left, SLICE)
                if spin_until_readable(sock.fd) or sock.conn.poll(timeout):
                    self._read(sock)
            finally:
                sock.read_lock.release()
            return
        try:
            ready = wait_any([s.conn for s in socks if not s.closed], SLICE if left is None else min(left, SLICE))
        except OSError:
            ready = [s.conn for s in socks]
        for sock in socks:
            if sock.conn in ready and sock.read_lock.acquire(False):
                try:
                    if not sock.closed and sock.conn.poll(0):
                        self._read(sock)
                finally:
                    sock.read_lock.release()

    def _read(self, sock: Socket) -> None:
        """Read one answer from ``sock`` (its read lock held); a Ctrl-C meanwhile waits until it is in place."""
        with self.link.deferring():
            self._read_one(sock)

    def _read_one(self, sock: Socket) -> None:
        try:
            msg = sock.conn.recv_bytes()
        except (EOFError, OSError):
            self.socket_lost(sock)
            return
        result = m.DirectResult._make(pickle.loads(memoryview(msg)[1:]))
        if result.records:
            self.records.extend(result.records)
            if self.leases is not None and self.leases._reaper is None:
                self.leases.start_reaper()  # passes them on to the node
        with self.lock:
            return_ids = sock.pending.pop(result.task_id, None) or []
            if sock.leased:
                self.leases.answered(sock, result.task_id)
                done = False
            else:
                done = not sock.pending and self._sockets.get(sock.actor_id) is not sock
        if sock.leased and sock.backlog:
            self.leases.send_backlog(sock)
        for oid, wire in zip(return_ids, result.wires):
            self.settle(oid, wire)
        if done:  # calls go another way now, and none is left on this socket
            with self.lock:
                sock.closed = True
                self.live.discard(sock)
            sock.conn.close()

    def settle(self, oid: bytes, wire) -> None:
        """The result ``oid`` came: inline (``wire``) or put to the node (None). It is in the cache before it
        leaves ``waiting``: a thread that finds it gone from there finds it here (or at the node)."""
        with self.lock:
            promote = oid in self._promote
            self._promote.discard(oid)
            unwanted = oid in self._unwanted
            self._unwanted.discard(oid)
            if wire is not None and not unwanted:
                data, buffers = wire
                self.cache[oid] = SerializedObject(data, buffers)
                if not promote:
                    self.here.add(oid)
            self.waiting.pop(oid, None)
            for watch in self.watches:  # wait loops over direct results (direct_watch.py)
                watch.came(oid)
        if wire is None:
            if unwanted:  # nothing here refers to it: the node may free it
                self.link.note("_refs", oid, -1)
        elif promote:
            self.link.tell("put", m.Put.pack(oid, wire, []))
        leases = self.leases
        if leases is not None and leases.waits.parked:
            leases.waits.ready(oid)  # tasks parked here on it go on

    def socket_lost(self, sock: Socket) -> None:
        """``sock`` closed: its actor's process is gone; the calls pending on it fail as the node fails
        calls in flight."""
        if sock.leased:  # a leased worker: its tasks go through the node, with their retries
            self.leases.lost(sock)
            return
        with self.lock:
            if sock.closed:
                return
            sock.closed = True
            self.live.discard(sock)
            pending, sock.pending = sock.pending, {}
        if self._sockets.get(sock.actor_id) is sock:
            self._sockets.pop(sock.actor_id, None)
            self._retry[sock.actor_id] = (time.monotonic() + LOOKUP_SECONDS, LOOKUP_SECONDS)
        try:
            sock.conn.close()
        except OSError:
            pass
        if not pending:
            return
        failure = to_wire(serialize_failure(RemoteFailure(ActorDiedError(self._cause(sock)))))
        for return_ids in pending.values():
            for oid in return_ids:
                self.settle(oid, failure)

    def _cause(self, sock: Socket) -> str:
        """Why the actor's process went, as the node tells once it has seen it go."""
        deadline = time.monotonic() + CAUSE_SECONDS
        while not self.closed:
            try:
                answer = m.DirectAnswer._make(self.link.request(
                    "direct_actor", m.DirectActor.pack(sock.actor_id, []), timeout=CAUSE_SECONDS))
            except (OSError, ConnectionError, GetTimeoutError):
                break
            if answer.state == "dead" and answer.cause:
                return answer.cause
            if answer.state in ("restarting", "pending") or (answer.pid and answer.pid != sock.pid):
                return (f"The actor's process ({sock.pid}) died while it ran this call; it is restarting "
                        f"(pass max_task_retries to retry such calls).")
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return f"The actor's process ({sock.pid}) died while it ran this call."

    def start_helper(self) -> None:
        with self.lock:
            if self.helper is not None:
                return
            self.helper = threading.Thread(target=self._help, name="anyray-direct-results", daemon=True)
        self.helper.start()


    def read_in_background(self) -> None:
        """This thread is about to wait elsewhere (for its node) while direct calls are pending: a helper
        reads their answers meanwhile (an actor process whose answers nobody reads stops reading calls)."""
        if self.waiting:
            self.start_helper()

    def _help(self) -> None:
        """Read answers while direct calls are pending and no thread may be reading them: results to put to
        the node, a thread waiting for its node, many calls sent without a ``get``."""
        while not self.closed:
            with self.lock:
                socks = self.busy()
                if not socks:
                    self.helper = None
                    return
            self.pump(socks, SLICE, self._nothing_waits)

    def _nothing_waits(self) -> bool:
        return not self.waiting


class DirectCalls(_Answers):
    """The driver's direct calls. ``link``: its node's ``ClientLink``; ``cache``: its store's cache (id ->
    SerializedObject), where results land; ``token``: the cluster token (the socket keys derive from it)."""

    def __init__(self, link, cache: dict, token: bytes):
        self.link = link
        self.cache = cache
        self._token = token
        self.lock = threading.Lock()
        self._connecting = threading.Lock()        # held while a thread opens an actor's socket
        self.enabled = os.environ.get(SWITCH, "1") != "0"
        self._sockets: dict[bytes, Socket] = {}   # actor id -> the socket its calls go to now
        self._never: set[bytes] = set()            # actors that take no direct calls
        self._retry: dict[bytes, tuple] = {}       # actor id -> (when to ask again, the wait after that)
        self._node_calls: dict[bytes, list] = {}   # actor id -> [the last call sent through the node]
        self.waiting: dict[bytes, Socket] = {}    # return id of a direct call -> its socket, until it comes
        self.here: set[bytes] = set()              # results held only here (the node has not got them)
        self._promote: set[bytes] = set()          # results to put to the node when they come
        self._unwanted: set[bytes] = set()         # results whose references all went before they came
        self.helper: threading.Thread | None = None
        self.live: set[Socket] = set()           # every socket not closed
        self.leases = None                         # the task leases (leases.py), set by the backend
        self.records: list = []                    # records of direct calls and leased tasks, for the node
        self.watches = weakref.WeakSet()           # the ready indexes of wait loops over direct results
        self.closed = False

    # -- sending ---------------------------------------------------------------------------
    def submit(self, spec) -> bool:
        """Send an actor call straight to its actor's process; False: it goes through the node."""
        actor_id = spec.actor_id
        if actor_id in self._never or self.closed or not self.enabled:
            return False
        sock = self._sockets.get(actor_id)
        if not eligible(spec):
            if sock is not None:  # from now on through the node, until the node has done these
                self.delivered(sock)
                self._sockets.pop(actor_id, None)
                self._retry[actor_id] = (time.monotonic() + LOOKUP_SECONDS, LOOKUP_SECONDS)
            self._node_calls[actor_id] = [spec.task_id]
            return False
        if sock is None:
            with self._connecting:  # one socket per actor, however many threads call it at once
                sock = self._sockets.get(actor_id) or self._connect(actor_id)
            if sock is None:
                if actor_id not in self._never:  # the actor runs its calls in order: the last one says
                    self._node_calls[actor_id] = [spec.task_id]  # when all are done
                return False
        return_ids = [r._id for r in spec.returns]
        payload = frame(m.DIRECT_CALL, m.dumps(m.ActorCall.pack(
            spec.task_id, spec.method_name, to_wire(spec.args), [], return_ids, call_options(spec.options),
            spec.name, spec.caller_id, spec.seq, None)))
        with sock.send_lock:
            # Writable: at least three quarters of the socket's buffer is free (Linux's rule for a Unix
            # socket), far more than a call's message (ARGS_MAX): the send cannot wait (over TCP, a third of it
            # at least, and the actor's machine takes it in while its own buffer has room). Not writable: the
            # process does not read calls now (it runs a long one, say), and a send could block this thread,
            # which the running call may wait for. The node has a window for such calls (node/send_window.py).
            full = not sock.poller.poll(0)
            with self.lock:  # a socket with a call pending is not closed for having answered its last one
                closed = sock.closed
                if not closed and not full:
                    sock.pending[spec.task_id] = return_ids
                    for oid in return_ids:
                        self.waiting[oid] = sock
            if not closed and not full:
                try:
                    sock.conn.send_bytes(payload)
                except OSError:
                    closed = None
        if closed is None:
            self.socket_lost(sock)
        elif closed or full:  # it went, or another socket took over after its last answer, or it is full: the
            if full:  # node's path, and the next calls too, until the node has done this one
                self.delivered(sock)
            self._sockets.pop(actor_id, None)
            self._retry[actor_id] = (time.monotonic() + LOOKUP_SECONDS, LOOKUP_SECONDS)
            self._node_calls[actor_id] = [spec.task_id]
            return False
        if self.helper is None and not sock.closed and backed_up(sock):
            self.start_helper()  # its answers are read while more calls go out
        return True

    def delivered(self, sock: Socket) -> None:
        """Before a call to ``sock``'s actor goes through the node: wait until the actor's machine has taken
        in the calls sent on ``sock``. The actor process takes what its direct sockets hold before a call
        from its node; a Unix socket holds what was sent at once, but over TCP a call sent may still be on
        its way (the actor not reading, its buffer full) and the call through the node could overtake it.
        The answers are read meanwhile (the actor may wait to write one before it reads on)."""
        if not sock.tcp:
            return
        wait = 0.0001
        while not sock.closed and unsent(sock):
            if sock.pending and self.helper is None:
                self.start_helper()
            time.sleep(wait)
            wait = min(wait * 2, 0.01)

    def _connect(self, actor_id: bytes) -> Socket | None:
        retry = self._retry.get(actor_id)
        now = time.monotonic()
        if retry is not None and now < retry[0]:
            return None
        answer = m.DirectAnswer._make(self.link.request(
            "direct_actor", m.DirectActor.pack(actor_id, self._node_calls.get(actor_id, []))))
        if answer.kind == "never":
            self._never.add(actor_id)
            self._node_calls.pop(actor_id, None)
            return None
        if answer.kind != "ok":
            wait = LOOKUP_SECONDS if retry is None else min(retry[1] * 2, LOOKUP_MAX_SECONDS)
            self._retry[actor_id] = (now + wait, wait)
            return None
        self._retry.pop(actor_id, None)
        self._node_calls.pop(actor_id, None)
        try:
            conn = self.open_socket(answer.path)
        except (OSError, PermissionError, EOFError):
            self._retry[actor_id] = (now + LOOKUP_SECONDS, LOOKUP_SECONDS)
            return None
        sock = Socket(actor_id, conn, answer.pid, answer.path)
        self._sockets[actor_id] = sock
        with self.lock:
            self.live.add(sock)
        return sock

    def open_socket(self, path: str) -> Connection:
        """Connect to a process's direct socket: ``path`` is its Unix socket, or ``tcp://host:port/<the
        node's session directory>`` (a process on another machine, or of another node)."""
        if path.startswith(TCP):
            where, _, directory = path[len(TCP):].partition("/")
            directory = "/" + directory
            host, _, port = where.rpartition(":")
            raw = socket.create_connection((host.strip("[]"), int(port)), timeout=10.0)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame's header and body: two writes
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a machine that vanished: the socket
            for option, value in KEEPALIVE:  # fails within about 25 s, and so do the calls pending on it
                raw.setsockopt(socket.IPPROTO_TCP, option, value)
        else:
            directory = os.path.dirname(path)
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(10.0)
            try:
                raw.connect(path)
            except OSError:
                raw.close()
                raise
        raw.settimeout(None)
        conn = Connection(raw.detach())
        key = direct_key(self._token, directory)
        silent = threading.Timer(HANDSHAKE_SECONDS, conn.close)  # a peer that stops answering: no hang
        silent.daemon = True
        silent.start()
        try:
            answer_challenge(conn, key)
            deliver_challenge(conn, key)
        except (AuthenticationError, EOFError, OSError):
            conn.close()
            raise PermissionError("An actor's process refused this driver's key for direct calls.") from None
        finally:
            silent.cancel()
        try:  # the process has taken the socket in: calls on it go ahead of any that come through the node
            admitted = conn.poll(HANDSHAKE_SECONDS) and conn.recv_bytes() == ADMITTED
        except (EOFError, OSError):
            admitted = False
        if not admitted:
            conn.close()
            raise OSError("An actor's process did not take its direct socket in.")
        return conn

    def created(self, actor_id: bytes) -> None:
        """A new actor: its first calls go through the node while its process starts (no question then)."""
        self._retry[actor_id] = (time.monotonic() + LOOKUP_SECONDS, LOOKUP_SECONDS)

    def stop(self, actor_id: bytes) -> None:
        """Calls to ``actor_id`` go through the node from now on (it is being killed): the calls sent
        before still get their answers, or fail when its process goes."""
        self._sockets.pop(actor_id, None)
        self._retry[actor_id] = (time.monotonic() + LOOKUP_SECONDS, LOOKUP_SECONDS)

    # -- references leaving the driver -------------------------------------------------------
    def promote(self, ids) -> None:
        """``ids`` leave this driver (a dependency, a reference inside arguments or a put): the node
        gets those it lacks, before the message that passes them on (one still coming, when it comes)."""
        if not (self.here or self.waiting):
            return
        start = False
        for oid in ids:
            with self.lock:
                if oid in self.here:
                    self.here.discard(oid)
                    obj = self.cache.get(oid)
                elif oid in self.waiting:
                    self._promote.add(oid)
                    start = True
                    continue
                else:
                    continue
            if obj is not None:
                self.link.tell("put", m.Put.pack(oid, to_wire(obj), []))
        if start:
            self.start_helper()

    def node_may_watch(self, ids) -> bool:
        """Whether the node may keep the ready index of a wait loop over ``ids`` (``core/waiting.py``). The
        node knows nothing of a direct call's result until it is put there: a loop over results that are
        all direct calls' waits here, on the ordinary path (False); a loop mixing them with others has
        them put to the node (one still coming, when it comes), and the node answers for all (True)."""
        with self.lock:
            direct = [oid for oid in ids if oid in self.waiting or oid in self.here]
        if not direct:
            return True
        if len(direct) == len(ids):
            return False
        self.promote(direct)
        return True

    def forget(self, oid: bytes) -> None:
        """The last reference to ``oid`` here went."""
        with self.lock:
            self.here.discard(oid)
            if oid in self.waiting:
                self._unwanted.add(oid)

    def pass_records_on(self) -> None:
        """Send the node the task records that came with direct results (ahead of any request after it:
        ``timeline``, ``error_info`` and ``anyray list`` find them there)."""
        if self.records:
            records, self.records = self.records, []
            self.link.send(m.RESULT, m.Result.pack(None, [], [], records))

    def close(self) -> None:
        if self.leases is not None:
            self.leases.close()
        self.closed = True
        for sock in list(self._sockets.values()):
            try:
                sock.conn.close()
            except OSError:
                pass
        self._sockets.clear()
