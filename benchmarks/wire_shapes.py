"""How a node's wire messages should be represented in Python: measured, not guessed.

    python benchmarks/wire_shapes.py [--number 100000] [--repeat 5] [--rounds 2]

For each hot message (TASK, RESULT, a nested submit, an actor call to the worker, an actor call
submitted by a worker, a ``get`` request and its answer) and each shape, one round trip is exactly
what the two ends do: build the message, pickle it as the node's links do (``protocol.dumps``, pickle
protocol 5, inside the ``(refs, body)`` envelope where the message has one), unpickle it, and read
one field by name (by index for the plain tuple, which is how the code reads it today). Shapes:

    tuple             today's plain tuples
    NamedTuple        a ``typing.NamedTuple`` pickled as itself (the pickle names the class)
    NT->tuple+_make   the NamedTuple built, sent as ``tuple(msg)``, read back with ``Type._make(body)``
    NT->tuple+new     the same, read back with ``tuple.__new__(Type, body)`` (no length check)
    pack+_make        the plain tuple built by the NamedTuple's generated ``pack(*fields)``
                      (``messages.Type.pack``), read back with ``Type._make(body)``: what the node uses
    dataclass(slots)  a ``@dataclass(slots=True)``
    msgspec           ``msgspec.Struct(array_like=True, gc=False)``, only if msgspec is importable

Shapes run interleaved (ABCD ABCD ...), ``--rounds`` times, because a shared VM's timings move by up
to 2x from run to run: each cell is the min over all rounds, and the median of the per-round mins is
printed beside it. Also printed: bytes per message, and the build cost alone (keywords against
positional). Section 12 of the issue-13 plan gives the rule the results are read by: the cheapest
shape that reads by name, whose TASK + RESULT overhead over tuples stays under 2% of one task.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import sys
import timeit
import types
from typing import NamedTuple

from anyray.adapters.node.messages import _add_pack, dumps

try:
    import msgspec
except ImportError:
    msgspec = None


def _id() -> bytes:
    return os.urandom(16)


_ARGS = (pickle.dumps(((1,), {}), 5), [])
# name -> (fields in wire order with typical values, whether it travels in the (refs, body) envelope)
MESSAGES = {
    "TASK": (dict(task_id=_id(), fn_id=_id(), blob=None, args=_ARGS, dep_ids=[], deps={},
                  return_ids=[_id()], name="f", resources={"CPU": 1.0}, gpu_ids=[],
                  retry_exceptions=False, max_retries=3, job=None), False),
    "RESULT": (dict(task_id=_id(), wires=[(b"\x80\x05K\x01.", [])], contained=[None], records=[]), True),
    "SUBMIT": (dict(task_id=_id(), fn_id=_id(), fn_name="f", blob=None, args=_ARGS, dep_ids=[],
                    return_ids=[_id()], resources={"CPU": 1.0},
                    options={"max_retries": 3, "retry_exceptions": False}, parent=_id(), name="f",
                    contained=[]), True),
    "ACTOR_CALL": (dict(task_id=_id(), method="m", args=_ARGS, dep_ids=[], return_ids=[_id()],
                        options={"retry_exceptions": False, "max_task_retries": None}, name="A.m",
                        caller_id=_id(), seq=1), False),
    "CALL_ACTOR": (dict(task_id=_id(), actor_id=_id(), method="m", args=_ARGS, dep_ids=[], return_ids=[_id()],
                        caller_id=_id(), seq=1, options={"retry_exceptions": False, "max_task_retries": None},
                        name="A.m", contained=[]), True),
    "GET": (dict(ids=[_id()], blocking=False, now=False), True),
    "GET_ANSWER": (dict(rid=7, ok=True, value=[(_id(), (b"\x80\x05K\x01.", []))]), False),
}


# The classes live in a module of their own name: a class of ``__main__`` would make ``dumps`` fall
# back to cloudpickle (the other process's ``__main__`` is not this one's), which is not what the
# node's message classes (in ``anyray.adapters.node.messages``) pay.
_TYPES = types.ModuleType("wire_shapes_types")
sys.modules[_TYPES.__name__] = _TYPES


def _register(cls):
    cls.__module__ = _TYPES.__name__
    setattr(_TYPES, cls.__name__, cls)
    return cls


def _classes(name: str, fields: dict):
    """The NamedTuple, slotted dataclass and (if installed) msgspec Struct with these fields."""
    nt = _register(_add_pack(NamedTuple(name.title().replace("_", ""), [(f, object) for f in fields])))
    dc = _register(dataclasses.make_dataclass(nt.__name__ + "DC", list(fields), slots=True))
    st = None
    if msgspec is not None:
        st = _register(msgspec.defstruct(nt.__name__ + "S", list(fields), array_like=True, gc=False))
    return nt, dc, st


def _cases(name: str, fields: dict, envelope: bool) -> dict:
    """shape -> a no-argument function doing one round trip of this message."""
    nt, dc, st = _classes(name, fields)
    values = tuple(fields.values())
    first = next(iter(fields))
    loads = pickle.loads
    wrap = (lambda body: (None, body)) if envelope else (lambda body: body)
    unwrap = (lambda msg: msg[1]) if envelope else (lambda msg: msg)
    make = nt._make
    new = tuple.__new__
    pack = nt.pack

    def plain():
        return unwrap(loads(dumps(wrap(tuple(values)))))[0]

    def named():
        return unwrap(loads(dumps(wrap(nt(*values))))).__getattribute__(first)

    def named_as_tuple():
        return getattr(make(unwrap(loads(dumps(wrap(tuple(nt(*values))))))), first)

    def named_as_tuple_new():
        return getattr(new(nt, unwrap(loads(dumps(wrap(tuple(nt(*values))))))), first)

    def packed():
        return getattr(make(unwrap(loads(dumps(wrap(pack(*values)))))), first)

    def slotted():
        return getattr(unwrap(loads(dumps(wrap(dc(*values))))), first)

    cases = {"tuple": plain, "NamedTuple": named, "NT->tuple+_make": named_as_tuple,
             "NT->tuple+new": named_as_tuple_new, "pack+_make": packed, "dataclass(slots)": slotted}
    if st is not None:
        def struct():
            return getattr(unwrap(loads(dumps(wrap(st(*values))))), first)
        cases["msgspec"] = struct
    return cases


def _sizes(name: str, fields: dict, envelope: bool) -> dict:
    nt, dc, st = _classes(name, fields)
    values = tuple(fields.values())
    wrap = (lambda body: (None, body)) if envelope else (lambda body: body)
    out = {"tuple": len(dumps(wrap(values))), "NamedTuple": len(dumps(wrap(nt(*values)))),
           "NT->tuple+_make": len(dumps(wrap(tuple(nt(*values))))), "dataclass(slots)": len(dumps(wrap(dc(*values))))}
    out["NT->tuple+new"] = out["pack+_make"] = out["NT->tuple+_make"]
    if st is not None:
        out["msgspec"] = len(dumps(wrap(st(*values))))
    return out


def _time(fn, number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=100_000, help="round trips per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per round (the min is kept)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds over every shape")
    opts = parser.parse_args()
    rows = {}
    for name, (fields, envelope) in MESSAGES.items():
        cases = _cases(name, fields, envelope)
        mins: dict[str, list[float]] = {shape: [] for shape in cases}
        for _ in range(opts.rounds):
            for shape, fn in cases.items():  # interleaved: a slow spell of the machine hits every shape
                mins[shape].append(_time(fn, opts.number, opts.repeat))
        rows[name] = (mins, _sizes(name, fields, envelope))
    shapes = list(next(iter(rows.values()))[0])
    print("ns per round trip (build, dumps, loads, read one field by name): min of all rounds "
          "[median of the per-round mins]; bytes per message\n")
    print("| message | " + " | ".join(shapes) + " |")
    print("|---|" + "---|" * len(shapes))
    for name, (mins, sizes) in rows.items():
        cells = [f"{min(mins[s]):,.0f} [{statistics.median(mins[s]):,.0f}] / {sizes[s]} B" for s in shapes]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    for shape in shapes[1:]:
        extra = sum(min(rows[m][0][shape]) - min(rows[m][0]["tuple"]) for m in ("TASK", "RESULT"))
        print(f"TASK + RESULT over tuples, {shape}: {extra:+,.0f} ns per task")
    fields = MESSAGES["TASK"][0]
    nt, _, _ = _classes("TASK", fields)
    values = tuple(fields.values())
    n = opts.number
    print("\nbuild cost of a 13-field message, ns: "
          f"tuple {_time(lambda: tuple(values), n, opts.repeat):,.0f}; "
          f"NamedTuple positional {_time(lambda: nt(*values), n, opts.repeat):,.0f}; "
          f"keywords {_time(lambda: nt(**fields), n, opts.repeat):,.0f}; "
          f"tuple(nt) {_time(lambda: tuple(nt(*values)), n, opts.repeat):,.0f} (build included); "
          f"pack {_time(lambda: nt.pack(*values), n, opts.repeat):,.0f}; "
          f"pack, keywords {_time(lambda: nt.pack(**fields), n, opts.repeat):,.0f}; "
          f"_make {_time(lambda: nt._make(values), n, opts.repeat):,.0f}; "
          f"tuple.__new__ {_time(lambda: tuple.__new__(nt, values), n, opts.repeat):,.0f}")
    msg = nt(*values)
    print(f"read one field, ns: by name {_time(lambda: msg.task_id, n, opts.repeat):,.1f}; "
          f"by index {_time(lambda: msg[0], n, opts.repeat):,.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
