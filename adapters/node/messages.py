"""Every message of a node's wire, by name: the tags, and one type per message body.

Framing (``framing``): every message is one ``multiprocessing.connection``
frame, one tag byte then a payload whose shape the tag fixes. Tags 1-4 are
the bare worker loop's, 5-15 the task protocol between a node and a process
linked to it (its workers, a driver, another node), 16-31 between the pool
and the fork server, 32-34 a cluster client's handshake.

The task protocol. The node sets a worker up with one CALL of
``worker_main.install(setup)``; from then on these tags flow (payloads are
pickles, ``dumps``):

node -> worker (and -> a driver: RESPONSE only; -> a peer node: RESPONSE and STREAM)
    TASK      ``Task``: run a task on the worker's main thread; at most one at a time
    RESPONSE  ``Response``: the answer to a REQUEST
    CANCEL    the task's id: interrupt that task if it is still running
    ACTOR     ``ActorOp(kind, body)`` for the actor this process hosts: "create" (``ActorCreate``),
              "call" (``ActorCall``), "cancel" (the call's first return id), "terminate" (None)
    STREAM    ``StreamPut``: an object of the stream of a generator the peer node handed here (its
              items and its count go to the caller's node, ahead of the task's result on the same
              connection; see ``cluster/streams.py``)

worker (or driver, or peer node) -> node, each ``Envelope(refs, body)``: ``refs`` is None or the
sender's ``RefChanges`` since its last message, applied before ``body``
    RESULT     ``Result``: a task's or actor call's outputs (with ``RecordRow`` rows of finished tasks)
    REQUEST    ``Request(rid, op, args)``: a call into the node's runtime; rid 0 wants no RESPONSE.
               ``args`` is the op's type in ``OP_TYPES``, or a bare value for the ops not listed there
    REFS       reference changes alone (``body`` None)
    ACTOR_DIED ``ActorDied``: the hosted actor ended (constructor failed, or its handles are gone)
    OUTPUT     ``[OutputLine, ...]``: what tasks printed, where the node forwards it to their drivers
               (a cluster node's workers; the multiprocess backend's print directly)

Reference changes are ``RefChanges(objects, handles, unpins)``: ``objects``
and ``handles`` are lists of ``(id, +1 or -1)``, the sender's first reference
to an id (+1, the node then holds it for the sender) or its last one going
(-1); ``unpins`` lists the keys of objects whose shared-memory views are all
gone in the sender. Because they travel ahead of the message that follows
them on the same connection, the node learns that a process holds a
reference before it can drop its own (a task's result comes after the
worker's references to its arguments).

How messages travel. Each type is a ``typing.NamedTuple`` whose field order
is the wire order. A message goes as the plain tuple of its fields, built by
``Type.pack(field=..., ...)`` (generated from the fields, so the order lives
in one place; the same as ``tuple(Type(...))`` at a third of the cost): the
tag already names the type, and a pickled NamedTuple costs several times a
tuple's (``benchmarks/wire_shapes.py``). A reader rebuilds the type with
``Type._make(body)`` and reads fields by name. An end still written with
plain tuples reads and writes the same bytes.
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple, TypedDict

import cloudpickle

# --------------------------------------------------------------------------- tags
# the bare worker loop (framing, worker_loop, pool)
HELLO = 1   # worker -> node, first message: WorkerHello
CALL = 2    # node -> worker: request id (u64 LE) + cloudpickle((fn, args, kwargs)) (struct, see framing)
REPLY = 3   # worker -> node: request id (u64 LE) + status (0 value, 1 error) + pickled value or (exc, traceback)
EXIT = 4    # node -> worker: leave the main loop and exit 0 (no payload)
# the task protocol
TASK = 5
RESULT = 6
REQUEST = 7
RESPONSE = 8
CANCEL = 9
ACTOR = 10
REFS = 11
ACTOR_DIED = 12
OUTPUT = 13
STREAM = 14
# pool <-> fork server
SERVER_HELLO = 16  # server -> pool, first message: its pid
FORK = 17          # pool -> server: Fork
FORKED = 18        # server -> pool: Forked
FORK_FAILED = 19   # server -> pool: ForkFailed
KILL = 20          # pool -> server: the worker id; SIGKILL it if still unreaped (so the pid is still its child)
EXITED = 21        # server -> pool: Exited; returncode as Popen's: -N means killed by signal N
SHUTDOWN = 22      # pool -> server: kill and reap every worker, then exit (no payload)
# a cluster client's handshake with a node daemon
CLIENT_HELLO = 32  # client -> node: ClientHello
CLIENT_SETUP = 33  # node -> client: the node's setup dict, or {"error": message}
CLIENT_READY = 34  # client -> node: bool, whether it mapped the node's shared memory

# ACTOR's kinds
ACTOR_CREATE, ACTOR_CALL, ACTOR_CANCEL, ACTOR_TERMINATE = "create", "call", "cancel", "terminate"

# Contained references of a stored value, as ids with their kind.
OBJECT, HANDLE = 0, 1


def dumps(value) -> bytes:
    """Pickle with the C pickler; values it cannot take (lambdas, local classes) go through cloudpickle.

    So do values that name something of ``__main__``: the C pickler refers to it by name, and the other
    process's ``__main__`` is not this one's (a worker's is the fork server); cloudpickle sends it whole.
    """
    try:
        data = pickle.dumps(value, 5)
    except Exception:  # noqa: BLE001 - cloudpickle takes what the C pickler refuses
        return cloudpickle.dumps(value, 5)
    if b"__main__" in data:
        return cloudpickle.dumps(value, 5)
    return data


# --------------------------------------------------------------------------- node -> worker
class Task(NamedTuple):
    task_id: bytes
    fn_id: bytes
    blob: bytes | None        # the function's pickled code, the first time this worker gets it
    args: Any                 # Inline or arena.Location
    dep_ids: list             # every dependency, in argument order (repeats kept)
    deps: dict                # dependency id -> Inline or Location
    return_ids: list
    name: str
    resources: dict
    gpu_ids: list
    retry_exceptions: Any
    max_retries: int
    job: tuple | None         # (job id, namespace) when it changes from this worker's last task
    placement: tuple | None   # (group id, capture child tasks) of its placement group, else None
    stream: tuple | None      # a generator's (mode, backpressure) (``generators.stream_of``), else None


class Response(NamedTuple):
    rid: int
    ok: bool
    value: Any                # the answer, or the exception when not ok


class ActorOp(NamedTuple):
    kind: str                 # ACTOR_CREATE, ACTOR_CALL, ACTOR_CANCEL or ACTOR_TERMINATE
    body: Any                 # ActorCreate, ActorCall, the call's first return id, or None


class ActorCreate(NamedTuple):
    actor_id: bytes
    cls_id: bytes
    blob: bytes | None
    name: str
    args: Any
    dep_ids: list
    resources: dict
    options: dict
    namespace: str
    is_async: bool
    gpu_ids: list
    restarts: int
    job: tuple


class ActorCall(NamedTuple):
    task_id: bytes
    method: str
    args: Any
    dep_ids: list
    return_ids: list
    options: dict             # retry_exceptions and max_task_retries only
    name: str
    caller_id: bytes
    seq: int
    stream: tuple | None      # a generator method's (mode, backpressure) (``generators.stream_of``), else None


# --------------------------------------------------------------------------- worker/driver/peer -> node
class Envelope(NamedTuple):
    refs: Any                 # RefChanges or None
    body: Any


class RefChanges(NamedTuple):
    objects: list             # [(object id, +1 or -1)]
    handles: list             # [(actor id, +1 or -1)]
    unpins: list              # keys whose shared-memory views are gone


class Result(NamedTuple):
    task_id: bytes | None     # None: the worker could not read the task it was sent
    wires: list               # one Inline or Location per return
    contained: list           # one [Contained] or None per return
    records: list             # RecordRow of the tasks finished since the last result


class RecordRow(NamedTuple):  # events.TaskRecord's fields, in its order
    task_id: bytes
    name: str
    kind: str
    start: float
    end: float
    pid: int
    tid: int
    error_type: str | None
    message: str | None


class Request(NamedTuple):
    rid: int                  # 0: no answer wanted
    op: str
    args: Any                 # OP_TYPES[op], or a bare value


class ActorDied(NamedTuple):
    actor_id: bytes | None    # None: a message to the actor could not be read
    cause: str


class OutputLine(NamedTuple):
    job: bytes
    stream: str               # "stdout" or "stderr"
    text: str


class PrintedLine(NamedTuple):  # a row of the answer of "output" and "output_here" (a cluster's driver asks)
    stream: str
    pid: int                  # the worker that printed it
    text: str


# --------------------------------------------------------------------------- request arguments, per op
class Submit(NamedTuple):
    task_id: bytes
    fn_id: bytes
    fn_name: str
    blob: bytes | None
    args: Any
    dep_ids: list
    return_ids: list
    resources: dict
    options: dict
    parent: bytes | None
    name: str
    contained: list


class Forward(NamedTuple):    # a task one node hands to another: Submit's fields, then job and where
    task_id: bytes
    fn_id: bytes
    fn_name: str
    blob: bytes | None
    args: Any
    dep_ids: list
    return_ids: list
    resources: dict
    options: dict
    parent: bytes | None
    name: str
    contained: list
    job: tuple
    where: dict               # object id -> the node that holds it


class CreateActor(NamedTuple):
    actor_id: bytes
    cls_id: bytes
    cls_name: str
    blob: bytes | None
    args: Any
    dep_ids: list
    resources: dict
    options: dict
    namespace: str
    is_async: bool
    method_options: dict
    contained: list


class CreateActorHere(NamedTuple):  # an actor one node places on another: CreateActor's fields, then these
    actor_id: bytes
    cls_id: bytes
    cls_name: str
    blob: bytes | None
    args: Any
    dep_ids: list
    resources: dict
    options: dict
    namespace: str
    is_async: bool
    method_options: dict
    contained: list
    job: tuple
    restarts: int


class CallActor(NamedTuple):
    task_id: bytes
    actor_id: bytes
    method: str
    args: Any
    dep_ids: list
    return_ids: list
    caller_id: bytes
    seq: int
    options: dict
    name: str
    contained: list


class Get(NamedTuple):        # answer: [Got] (to a peer node: [GotWithRefs])
    ids: list
    blocking: bool            # the caller is a task: the node lends its CPUs while it waits
    now: bool                 # answer at once: the objects, or GetTimeoutError


class Got(NamedTuple):
    oid: bytes
    wire: Any                 # Inline or Location


class GotWithRefs(NamedTuple):
    oid: bytes
    wire: Any
    contained: list           # [ContainedAt]


class Wait(NamedTuple):       # answer: the ready ids
    ids: list
    num_returns: int
    may_wait: bool
    blocking: bool


class WaitWatch(NamedTuple):  # "wait_watch": a wait loop's ready index, kept by the node (wait_watches.py)
    key: int                  # the index's number, chosen by the asker (per connection)
    ids: list | None          # its ids, in order, when first asked (or asked again after the node dropped it)
    seen: int                 # how many positions the asker has from the node's answers so far
    needed: int               # answer once this many positions beyond ``seen`` are sealed (or at once)
    may_wait: bool
    blocking: bool            # the asker is a task: the node lends its CPUs while it waits
    close: bool               # the loop is over: drop the index


class Put(NamedTuple):        # "put" and "put_kept"
    oid: bytes
    wire: Any
    contained: list


class StreamPut(NamedTuple):  # "stream_put" (no answer), and a STREAM from a peer node: an object of a stream
    generator_id: bytes       # the generator task's return id (``generators``: items, count and acks)
    oid: bytes
    wire: Any
    contained: list


class Named(NamedTuple):      # answer: the cloudpickled handle
    name: str
    namespace: str


class Kill(NamedTuple):
    actor_id: bytes
    no_restart: bool


class GroupOp(NamedTuple):    # "placement_group": a PlacementGroupPort call of a worker's runtime
    op: str                   # "create", "remove", "table" or "find"
    group_id: bytes | None    # remove, table (None: every group)
    spec: Any                 # create: the PlacementGroupSpec
    name: str | None          # find
    namespace: str | None     # find


class ReserveBundles(NamedTuple):  # "pg_reserve", node to node: answer True once reserved here, else False
    group: dict                   # the group's record (cluster/group_records.py)
    indexes: list                 # the bundles to reserve on the node asked


class ReleaseBundles(NamedTuple):  # "pg_release", node to node: give back a reservation that made no group
    group_id: str                 # hex
    indexes: list                 # the bundles to give back


class CancelRef(NamedTuple):
    oid: bytes
    force: bool
    recursive: bool


# Ops whose argument is a bare value: alloc (nbytes; answer an arena.Grant), abandon (rid), list_named
# (namespace), resources ("total", "available" or "nodes"), usage (None), expect ({oid: node id}),
# records, records_here (job id; answer: [RecordRow]), output, output_here (job id; answer: [PrintedLine]),
# and a daemon's metadata_url, status, list, list_here.
OP_TYPES = {"submit": Submit, "forward": Forward, "create_actor": CreateActor, "create_actor_here": CreateActorHere,
            "actor_call": CallActor, "get": Get, "wait": Wait, "wait_watch": WaitWatch, "put": Put, "put_kept": Put,
            "stream_put": StreamPut, "named": Named,
            "kill": Kill, "cancel": CancelRef, "placement_group": GroupOp, "pg_reserve": ReserveBundles,
            "pg_release": ReleaseBundles}


# --------------------------------------------------------------------------- values inside messages
class Contained(NamedTuple):  # a reference pickled inside a value
    kind: int                 # OBJECT or HANDLE
    id: bytes


class ContainedAt(NamedTuple):
    kind: int
    id: bytes
    node: str                 # the node that holds it


class Inline(NamedTuple):     # an object travelling in the message itself (else an arena.Location)
    data: bytes
    buffers: list


# --------------------------------------------------------------------------- the bare loop, handshakes (cold)
class Invoke(NamedTuple):     # CALL's pickled part, after the request id
    fn: Any
    args: tuple
    kwargs: dict


class WorkerHello(NamedTuple):
    worker_id: int
    pid: int


class Fork(NamedTuple):
    worker_id: int
    env: dict


class Forked(NamedTuple):
    worker_id: int
    pid: int


class ForkFailed(NamedTuple):
    worker_id: int
    message: str


class Exited(NamedTuple):
    worker_id: int
    pid: int
    returncode: int


class ClientHello(TypedDict):  # a dict on the wire
    pid: int
    host: str
    role: str
    job_id: bytes
    namespace: str


def _add_pack(cls: type) -> type:
    """Give a message type ``pack(*fields)``: the plain tuple that travels, built without the class."""
    fields = ", ".join(cls._fields)
    namespace: dict = {}
    exec(f"def pack({fields}):\n    return ({fields},)\n", namespace)  # as namedtuple builds its __new__
    pack = namespace["pack"]
    pack.__qualname__ = f"{cls.__name__}.pack"
    pack.__module__ = __name__
    pack.__doc__ = f"A {cls.__name__} as it travels: the plain tuple of its fields, in their order."
    cls.pack = staticmethod(pack)
    return cls


TYPES = [value for value in list(globals().values())
         if isinstance(value, type) and issubclass(value, tuple) and hasattr(value, "_fields")]
for _cls in TYPES:
    _add_pack(_cls)
del _cls

# Each tag's body: a type above, or what a bare body is.
TYPE_OF_TAG: dict[int, type] = {
    HELLO: WorkerHello, TASK: Task, RESULT: Result, REQUEST: Request, RESPONSE: Response, ACTOR: ActorOp,
    ACTOR_DIED: ActorDied, STREAM: StreamPut, FORK: Fork, FORKED: Forked, FORK_FAILED: ForkFailed, EXITED: Exited,
    CLIENT_HELLO: ClientHello,
}
BARE_BODY: dict[int, str] = {
    CALL: "request id (a struct, framing.CALL_HEAD), then a cloudpickled Invoke",
    REPLY: "request id, status and a pickled value or (exception, traceback text)",
    EXIT: "nothing", CANCEL: "the task id", REFS: "None (the envelope's refs are the message)",
    OUTPUT: "a list of OutputLine", SERVER_HELLO: "the fork server's pid", KILL: "the worker id",
    SHUTDOWN: "nothing", CLIENT_SETUP: "the node's setup dict, or {'error': message}",
    CLIENT_READY: "bool: the client mapped the node's shared memory",
}
ENVELOPED = frozenset({RESULT, REQUEST, REFS, ACTOR_DIED, OUTPUT})  # sent inside an Envelope


def contained_ids(refs) -> list[tuple[int, bytes]]:
    """``Contained(kind, id)`` of the ObjectRefs and ActorHandles pickled inside one value, as plain tuples."""
    out = []
    for r in refs:
        actor_id = getattr(r, "_actor_id", None)
        out.append((OBJECT, r._id) if actor_id is None else (HANDLE, actor_id))
    return out


# --------------------------------------------------------------------------- direct calls (cluster/direct.py)
# A driver on the actor's machine sends a sync actor's calls straight to the actor's process, on a Unix
# socket of the process (``worker_direct``), each frame a tag then a pickle (no Envelope: no references
# travel on it).
DIRECT_CALL = 40    # driver -> the actor's process: ActorCall (no dependencies, no stream)
DIRECT_RESULT = 41  # the actor's process -> driver: DirectResult


class DirectResult(NamedTuple):
    task_id: bytes
    wires: list               # per return id: a packed Inline, or None: put to the node (read it there)
    records: list             # the call's TaskRecord rows: the driver passes them on to its node


class DirectActor(NamedTuple):  # "direct_actor", driver -> node; answer: DirectAnswer
    actor_id: bytes
    calls: list               # task ids of this driver's calls to it that went through the node


class DirectAnswer(NamedTuple):
    kind: str                 # "ok": connect to path; "later": ask again; "never": take the node's path
    path: str | None          # the actor process's socket
    pid: int | None           # the actor's process
    state: str                # the actor's state ("alive", "restarting", "dead", "" when unknown here)
    cause: str                # why it died, once dead


class DirectCancel(NamedTuple):  # "direct_cancel", driver -> node (no answer)
    actor_id: bytes
    oid: bytes                # the direct call's first return id


for _cls in (DirectResult, DirectActor, DirectAnswer, DirectCancel):
    _add_pack(_cls)
    TYPES.append(_cls)
del _cls
TYPE_OF_TAG[DIRECT_CALL] = ActorCall
TYPE_OF_TAG[DIRECT_RESULT] = DirectResult
OP_TYPES["direct_actor"] = DirectActor
OP_TYPES["direct_cancel"] = DirectCancel

# Task leases (cluster/leases.py, cluster/lease_host.py): a node lends a driver an idle worker and its
# resources; the driver sends that worker Task messages (DIRECT_TASK) on the worker's direct socket.
DIRECT_TASK = 42    # driver -> a leased worker: DirectTask


class DirectTask(NamedTuple):  # a Task without stream, placement or GPUs; its dependencies inline
    task_id: bytes
    fn_id: bytes
    blob: bytes | None        # the function's pickled code, the first time on this socket
    args: Any                 # Inline
    dep_ids: list             # as Task's
    deps: dict                # dependency id -> Inline
    return_ids: list
    name: str
    resources: dict
    retry_exceptions: Any
    max_retries: int
    job: tuple                # (job id, namespace) of the driver


class LeaseAsk(NamedTuple):  # "lease_worker", driver -> node; answer: LeaseAnswer
    resources: dict           # what the worker's tasks take (CPU only)


class LeaseAnswer(NamedTuple):
    lease_id: int             # 0: none now (no free resources, or work of that shape queued here)
    path: str | None          # the worker's direct socket
    pid: int | None
    elsewhere: bool           # lease id 0: another node has room now (a task through this node goes there)


class LeaseEnd(NamedTuple):  # "lease_return" (no answer), "lease_cancel" (no answer), driver -> node
    lease_id: int
    task_id: bytes            # lease_cancel: the task to interrupt (b"" for lease_return)
    force: bool               # lease_cancel: kill the worker
    recursive: bool           # lease_cancel: the tasks it submitted too


for _cls in (DirectTask, LeaseAsk, LeaseAnswer, LeaseEnd):
    _add_pack(_cls)
    TYPES.append(_cls)
del _cls
TYPE_OF_TAG[DIRECT_TASK] = DirectTask
OP_TYPES["lease_worker"] = LeaseAsk
OP_TYPES["lease_return"] = LeaseEnd
OP_TYPES["lease_cancel"] = LeaseEnd


class DashboardAsk(NamedTuple):  # "dashboard_here", a head's dashboard -> every other node (dashboard/taps.py)
    what: str                 # "tasks", "timeline" or "log"
    arg: Any                  # for "log": the worker's id


_add_pack(DashboardAsk)
TYPES.append(DashboardAsk)
OP_TYPES["dashboard_here"] = DashboardAsk
