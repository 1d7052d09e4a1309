"""Task leases, the driver's side (``lease_host.py`` is the node's): a driver's plain tasks go straight to
a worker its node lent it, not through the node, as Ray's worker leases.

- A task may go on a lease when it has no references inside its arguments, small arguments, no stream, no
  runtime_env, no placement (default strategy), no ``max_calls``, takes CPUs alone, and each of its
  dependencies is small and here or coming here (a direct result, as Ray's owner resolves a task's
  dependencies before it asks for a lease). Every other task goes through the node, as before; so does
  one when the node lends nothing.
- Dependencies go inline with the task; a task whose dependencies are still coming waits here for them
  (``lease_deps.py``): a chain of tasks so never takes the node's path.
- The lease key is the task's resource shape (a worker without a runtime_env runs any function: its code
  travels with the first task of it on each socket). A task goes to the key's lease with the fewest tasks
  pending; when each has one, the driver asks its node for another (one round trip); when the node says
  none (its resources are taken, or work of its own waits), tasks of that shape queue on the held leases
  (``DEPTH_MAX`` each) and the driver asks again after ``ASK_AGAIN_SECONDS`` (doubling while the answer
  stays none, up to ``ASK_AGAIN_MAX_SECONDS``). A task whose worker's socket has no room waits in the
  lease's backlog, sent as answers are read (a helper thread reads them meanwhile).
- A lease with nothing pending for ``IDLE_SECONDS`` goes back to the node (a helper thread looks); the
  socket to its worker stays open for the next lease of that worker. At shutdown the idle ones go back.
  A lease held for ``TURN_SECONDS`` takes no new tasks and goes back once its tasks are done: the node
  then starts the work queued there (another driver's) before it lends again.
- Results come as an actor's direct calls' do (``direct.py``): into the store's cache, read by the
  thread that waits for them.
- A leased worker that dies (its socket closes): the task it ran is sent through the node with one retry
  less (``max_retries`` 0: ``WorkerCrashedError``), the tasks queued behind it through the node as they
  were. ``cancel`` goes through the node, which interrupts the worker (``force``: kills it; the task is
  cancelled at once and the others on that worker are sent through the node, none charged a retry).
- ``ANYRAY_TASK_LEASES=0`` (or ``ANYRAY_DIRECT_CALLS=0``) in the driver's environment: every task takes
  the node's path.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import cloudpickle

from anyray.exceptions import TaskCancelledError, WorkerCrashedError
from anyray.executor import serialize_failure
from anyray.serialization import portable_classes
from anyray.specs import RemoteFailure

from ..node import messages as m
from ..node.framing import frame
from ..node.store import to_wire
from .direct import ARGS_MAX, SWITCH, Socket
from .lease_deps import PARKED, ParkedTasks

LEASE_SWITCH = "ANYRAY_TASK_LEASES"  # on unless "0" (as is ANYRAY_DIRECT_CALLS)
IDLE_SECONDS = 0.02        # a lease with nothing pending this long goes back to the node
ASK_AGAIN_SECONDS = 0.01   # after the node lent nothing, how long before the driver asks again
ASK_AGAIN_MAX_SECONDS = 0.2
CREDIT = 32 * 1024         # bytes sent on a socket seen writable before looking again (it had >= 3/4 free)
MESSAGE_COST = 1024        # what one message costs a Unix socket's send buffer beyond twice its bytes: the kernel
                           # charges each message's buffer head and rounded-up allocation, not its payload
TURN_SECONDS = 1.0         # a lease takes new tasks this long, then goes back when done (others get a turn)
RECORDS_SECONDS = 0.5      # how often the records of leased tasks go on to the node (and before a request for them)
DEPTH_MAX = 10_000         # tasks pending on one lease beyond which the next goes through the node


def eligible(spec) -> bool:
    """Whether a task may go on a lease (see the module's docstring)."""
    options = spec.options
    resources = spec.resources
    args = spec.args
    contained = args.contained_refs  # the dependencies too: others are references passed on inside
    if contained and (len(contained) > len(spec.deps) or any(r not in spec.deps for r in contained)):
        return False
    return (args.nbytes < ARGS_MAX and len(resources) == 1
            and resources.get("CPU", 0) > 0 and type(options.get("num_returns")) is not str
            and not options.get("runtime_env") and options.get("scheduling_strategy") in (None, "DEFAULT")
            and not options.get("max_calls"))


def task_rows(leases, node_id: str) -> list[dict]:
    """``anyray.util.state.list_tasks`` rows of the tasks on a driver's leases (the first on each worker
    RUNNING, the rest SUBMITTED_TO_WORKER) and of those parked in it (PENDING_ARGS_AVAIL): the node knows
    them only once their records come with their results."""
    calls = leases.calls
    with calls.lock:
        sent = [(sock.pid, list(sock.specs.values())) for sock in calls.live if sock.leased and sock.specs]
        parked = leases.waits.specs()
    rows = []
    for pid, specs in sent:
        rows += [_row(spec, "SUBMITTED_TO_WORKER" if i else "RUNNING", pid, node_id) for i, spec in enumerate(specs)]
    return rows + [_row(spec, "PENDING_ARGS_AVAIL", None, node_id) for spec in parked]


def _row(spec, state: str, pid: int | None, node_id: str) -> dict:
    return {"task_id": spec.task_id.hex(), "name": spec.name, "state": state, "type": "NORMAL_TASK",
            "func_or_class_name": spec.function.name, "actor_id": None, "worker_pid": pid, "node_id": node_id,
            "required_resources": dict(spec.resources)}


class _LeaseSocket(Socket):
    """A direct socket to a leased worker: the lease it is on, the tasks sent on it (in order)."""

    __slots__ = ("lease_id", "key", "fns", "specs", "idle_since", "returned", "killed", "backlog", "credit",
                 "since")
    leased = True

    def __init__(self, conn, pid: int, path: str):
        super().__init__(None, conn, pid, path)
        self.lease_id = 0
        self.key = None
        self.fns: set[bytes] = set()      # functions whose code this worker got on this socket
        self.specs: dict = {}             # task id -> spec, of the tasks pending on it, in order
        self.idle_since = time.monotonic()
        self.returned = False             # its lease went back: nothing more is sent on it
        self.killed = False               # a force cancel kills its worker: nothing pending is charged a retry
        self.backlog: collections.deque = collections.deque()  # messages waiting for room on the socket
        self.credit = 0                   # bytes that may go before the socket's room is looked at again
        self.since = 0.0                  # when its lease began


class TaskLeases:
    """The driver's leases. ``calls``: its ``DirectCalls`` (whose answers machinery reads the results);
    ``node_submit(spec)``: the node's path for a task; ``job``: (job id, namespace)."""

    def __init__(self, calls, node_submit, job: tuple):
        self.calls = calls
        self.link = calls.link
        self.submit_node = node_submit
        self._job = job
        self.enabled = calls.enabled and os.environ.get(LEASE_SWITCH, "1") != "0" \
            and os.environ.get(SWITCH, "1") != "0"
        self._asking = threading.Lock()           # one lease request at a time
        self._held: dict[tuple, list] = {}        # key -> the lease sockets held for it
        self._ending: list = []                   # leases past their turn, going back once their tasks are done
        self._ask_at: dict[tuple, tuple] = {}     # key -> (when the driver may ask for another lease, the wait)
        self._elsewhere: set[tuple] = set()       # keys the node lent none of but another node has room for
        self._spare: dict[str, _LeaseSocket] = {}  # path -> an open socket to a worker not leased now
        self._blobs: dict[bytes, bytes] = {}      # function id -> its pickled code
        self._reaper: threading.Thread | None = None
        self._records_at = 0.0
        self._reaping = threading.Lock()
        self.waits = ParkedTasks(calls, self)     # tasks waiting here for their dependencies

    # -- sending ---------------------------------------------------------------------------
    def submit(self, spec) -> bool:
        """Send a task to a leased worker; False: it goes through the node."""
        calls = self.calls
        if not self.enabled or calls.closed or not eligible(spec):
            return False
        deps = None
        if spec.deps:
            deps = self.waits.resolve(spec)
            if deps is None:
                return False
            if deps is PARKED:
                return True
        return self.place(spec, deps)

    def place(self, spec, deps: dict | None) -> bool:
        """Send ``spec`` on a lease of its shape (asking the node for one when each held has work)."""
        key = (spec.resources["CPU"],)
        held = self._held.get(key)
        best = min(held, key=lambda s: len(s.pending)) if held else None
        if (best is None or best.pending) and time.monotonic() >= self._ask_at.get(key, (0.0,))[0]:
            fresh = self._lease(key, spec.resources)
            if fresh is not None:
                best = fresh
        if best is None or len(best.pending) >= DEPTH_MAX or (best.pending and key in self._elsewhere):
            return False  # through the node (which forwards it to a node with room, if one has)
        return self._send(best, spec, deps)

    def _send(self, sock: _LeaseSocket, spec, deps: dict | None = None) -> bool:
        fn = spec.function
        fn_id = fn.function_id
        blob = None
        if fn_id not in sock.fns:
            blob = self._blobs.get(fn_id)
            if blob is None:
                blob = self._blobs[fn_id] = cloudpickle.dumps(fn.target, 5)
        options = spec.options
        return_ids = [r._id for r in spec.returns]
        payload = frame(m.DIRECT_TASK, m.dumps(m.DirectTask.pack(
            spec.task_id, fn_id, blob, to_wire(spec.args), [r._id for r in spec.deps] if deps else [],
            deps or {}, return_ids, spec.name, spec.resources, portable_classes(options["retry_exceptions"]),
            options["max_retries"], self._job)))
        calls = self.calls
        with sock.send_lock:
            with calls.lock:
                ok = not sock.closed and not sock.returned
                if ok:
                    sock.pending[spec.task_id] = return_ids
                    sock.specs[spec.task_id] = spec
                    for oid in return_ids:
                        calls.waiting[oid] = sock
            if ok:
                sock.fns.add(fn_id)
                sock.backlog.append(payload)
                ok = self._flush(sock)
        if ok is None:
            calls.socket_lost(sock)  # the task is sent through the node with the others pending there
            return True
        if sock.backlog and calls.helper is None:
            calls.start_helper()  # answers are read (and the backlog sent) while this thread goes on
        return ok is not False

    @staticmethod
    def _flush(sock) -> bool | None:
        """Under the socket's send lock: send its backlog while the socket has room (a send never waits:
        a worker busy with a long task does not read); None if the socket broke."""
        backlog = sock.backlog
        while backlog:
            payload = backlog[0]
            cost = 2 * len(payload) + MESSAGE_COST  # small tasks: counted by their bytes alone, 109 of 300 bytes
            if sock.credit < cost:                  # filled the buffer and the send blocked, with the worker
                if not sock.poller.poll(0):         # blocked sending its answers back: both waited forever
                    return True  # sent when answers come (the worker reads before each task)
                sock.credit = CREDIT
            try:
                sock.conn.send_bytes(payload)
            except OSError:
                return None
            sock.credit -= cost
            backlog.popleft()
        return True

    def send_backlog(self, sock) -> None:
        """An answer came on ``sock``: the worker reads again, send what waits for room."""
        if not sock.backlog:
            return
        with sock.send_lock:  # waited for: a flush skipped here could leave the backlog with nobody to send it
            broke = self._flush(sock) is None
        if broke:
            self.calls.socket_lost(sock)

    def _lease(self, key: tuple, resources: dict) -> _LeaseSocket | None:
        if not self._asking.acquire(False):
            return None  # another thread asks now: this task goes where it can
        try:
            answer = m.LeaseAnswer._make(self.link.request("lease_worker", m.LeaseAsk.pack(resources)))
            if not answer.lease_id:
                self._refused(key)
                if answer.elsewhere:
                    self._elsewhere.add(key)
                else:
                    self._elsewhere.discard(key)
                return None
            sock = self._spare.pop(answer.path, None)
            if sock is None or sock.closed or sock.pid != answer.pid:
                try:
                    sock = _LeaseSocket(self.calls.open_socket(answer.path), answer.pid, answer.path)
                except (OSError, PermissionError, EOFError):
                    self._give_back(answer.lease_id)
                    self._refused(key)
                    return None
            self._ask_at.pop(key, None)
            self._elsewhere.discard(key)
            sock.lease_id, sock.key, sock.returned, sock.killed = answer.lease_id, key, False, False
            sock.idle_since = sock.since = time.monotonic()
            calls = self.calls
            with calls.lock:
                calls.live.add(sock)
                self._held.setdefault(key, []).append(sock)
            self.start_reaper()
            return sock
        finally:
            self._asking.release()

    def _refused(self, key: tuple) -> None:
        wait = min(self._ask_at.get(key, (0.0, ASK_AGAIN_SECONDS / 2))[1] * 2, ASK_AGAIN_MAX_SECONDS)
        self._ask_at[key] = (time.monotonic() + wait, wait)

    def _give_back(self, lease_id: int) -> None:
        try:
            self.link.tell("lease_return", m.LeaseEnd.pack(lease_id, b"", False, False))
        except (OSError, ConnectionError):
            pass

    # -- answers, idle leases --------------------------------------------------------------
    def answered(self, sock: _LeaseSocket, task_id: bytes) -> None:
        """Under the answers' lock: ``task_id`` on ``sock`` has its result."""
        sock.specs.pop(task_id, None)
        if not sock.pending:
            sock.idle_since = time.monotonic()

    def start_reaper(self) -> None:
        """Look after idle leases and records (a helper thread, while there is any)."""
        with self._reaping:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="anyray-lease-idle", daemon=True)
                self._reaper.start()

    def _reap(self) -> None:
        """Give back the leases idle for ``IDLE_SECONDS``, pass records on every ``RECORDS_SECONDS``."""
        calls = self.calls
        while not calls.closed:
            time.sleep(IDLE_SECONDS / 2)
            self.return_idle(time.monotonic() - IDLE_SECONDS)
            now = time.monotonic()
            if calls.records and now >= self._records_at:
                self._records_at = now + RECORDS_SECONDS
                try:
                    calls.pass_records_on()
                except (OSError, ConnectionError):
                    return
            with self._reaping:
                if not calls.records and not any(self._held.values()) and not self._ending:
                    self._reaper = None
                    return

    def return_idle(self, before: float) -> None:
        """Give back the leases with nothing pending since ``before``."""
        calls = self.calls
        going = []
        turn = time.monotonic() - TURN_SECONDS
        with calls.lock:
            for socks in self._held.values():
                for sock in list(socks):
                    if not sock.pending and sock.idle_since <= before and not sock.closed:
                        sock.returned = True
                        socks.remove(sock)
                        going.append(sock)
                    elif sock.since < turn:
                        socks.remove(sock)  # no new tasks: it goes back once those it has are done
                        self._ending.append(sock)
            for sock in list(self._ending):
                if sock.closed:
                    self._ending.remove(sock)
                elif not sock.pending:
                    sock.returned = True
                    self._ending.remove(sock)
                    going.append(sock)
        for sock in going:
            self._give_back(sock.lease_id)
            old = self._spare.pop(sock.path, None)
            if old is not None and old is not sock:
                old.conn.close()
            self._spare[sock.path] = sock

    # -- failures, cancels -----------------------------------------------------------------
    def lost(self, sock: _LeaseSocket) -> None:
        """``sock`` closed: its worker died. The task it ran goes through the node with one retry less
        (none left: ``WorkerCrashedError``), the others as they were."""
        calls = self.calls
        with calls.lock:
            if sock.closed:
                return
            sock.closed = sock.returned = True
            calls.live.discard(sock)
            specs, sock.specs = sock.specs, {}
            sock.pending = {}
            sock.backlog.clear()
            socks = self._held.get(sock.key)
            if socks is not None and sock in socks:
                socks.remove(sock)
        if self._spare.get(sock.path) is sock:
            self._spare.pop(sock.path, None)
        try:
            sock.conn.close()
        except OSError:
            pass
        charged = not sock.killed
        for spec in specs.values():
            retries = spec.options["max_retries"]
            if charged and retries == 0:
                error = WorkerCrashedError(
                    f"The worker running {spec.name} (pid {sock.pid}) died while it ran the task (on this "
                    f"driver's lease of it). Raise max_retries to retry it more often.")
                failure = to_wire(serialize_failure(RemoteFailure(error)))
                for ref in spec.returns:
                    calls.settle(ref._id, failure)
                charged = False
                continue
            if charged and retries > 0:
                spec.options = {**spec.options, "max_retries": retries - 1}
            charged = False
            self.waits.to_node(spec, moved=True)

    def cancel(self, sock: _LeaseSocket, oid: bytes, force: bool, recursive: bool = False) -> None:
        """Cancel the task returning ``oid``, pending on ``sock``: the node interrupts (or kills) its worker."""
        calls = self.calls
        if sock is PARKED:  # waiting here for its dependencies
            self.waits.cancel(oid)
            return
        with calls.lock:
            spec = next((s for s in sock.specs.values() if s.returns and s.returns[0]._id == oid), None)
            if spec is None or sock.closed:
                return
            if force:
                sock.killed = True
                sock.pending.pop(spec.task_id, None)
                sock.specs.pop(spec.task_id, None)
        if force:
            failure = to_wire(serialize_failure(RemoteFailure(TaskCancelledError(f"Task {spec.name} was cancelled."))))
            for ref in spec.returns:
                calls.settle(ref._id, failure)
        try:
            self.link.tell("lease_cancel", m.LeaseEnd.pack(sock.lease_id, spec.task_id, force, recursive))
        except (OSError, ConnectionError):
            pass

    def close(self) -> None:
        """The driver shuts down: its idle leases go back (the busy ones end with its connection)."""
        try:
            self.return_idle(time.monotonic())
        except Exception:  # noqa: BLE001 - shutting down regardless
            pass
        try:
            self.calls.pass_records_on()
        except (OSError, ConnectionError):
            pass
        for sock in list(self._spare.values()):
            try:
                sock.conn.close()
            except OSError:
                pass
        self._spare.clear()
