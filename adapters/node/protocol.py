"""The task protocol between a node's scheduler and its workers, on top of ``workers``' framing.

The driver sets a worker up with one CALL of ``worker.install(setup)``;
from then on these tags flow (payloads are pickles):

driver -> worker
    TASK      run a task on the worker's main thread; at most one at a time
    RESPONSE  ``(request_id, ok, value)``: the answer to a REQUEST
    CANCEL    ``task_id``: interrupt that task if it is still running
    ACTOR     ``(kind, body)``: "create", "call", "cancel" or "terminate" for the actor this process hosts

worker -> driver, each ``(refs, body)``: ``refs`` is None or the worker's
reference changes since its last message, applied before ``body``
    RESULT     ``(task_id, wires, contained, records)``: a task's or actor call's outputs
    REQUEST    ``(request_id, op, args)``: a call into the driver's runtime; id 0 wants no RESPONSE
    REFS       reference changes alone (``body`` None)
    ACTOR_DIED ``(actor_id, cause)``: the hosted actor ended (constructor failed, or its handles are gone)
    OUTPUT     ``[(job_id, stream, text), ...]``: what tasks printed, where the node forwards it to
               their drivers (a cluster node's workers; the multiprocess backend's print directly)

Reference changes are ``(objects, handles, unpins)``: ``objects`` and
``handles`` are lists of ``(id, +1 or -1)``, the worker's first reference to
an id (+1, the driver then holds it for the worker) or its last one going
(-1); ``unpins`` lists the keys of objects whose shared-memory views are all
gone in the worker. Because they travel ahead of the message that follows
them on the same connection, the driver learns that a worker holds a
reference before it can drop its own (a task's result comes after the
worker's references to its arguments).
"""

from __future__ import annotations

import pickle

import cloudpickle

TASK = 5
RESULT = 6
REQUEST = 7
RESPONSE = 8
CANCEL = 9
ACTOR = 10
REFS = 11
ACTOR_DIED = 12
OUTPUT = 13


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



# Contained references of a stored value, as ids with their kind.
OBJECT, HANDLE = 0, 1


def contained_ids(refs) -> list[tuple[int, bytes]]:
    """``(kind, id)`` of the ObjectRefs and ActorHandles pickled inside one value."""
    out = []
    for r in refs:
        actor_id = getattr(r, "_actor_id", None)
        out.append((OBJECT, r._id) if actor_id is None else (HANDLE, actor_id))
    return out
