"""The node's wire messages (adapters/node/messages.py): one named type per message, sent as plain tuples.

The wire itself stays the plain tuple it always was, so a converted end and one still written with
tuples read each other: these tests hold the field order to that (a round trip through the bytes, and
the unpackings the schedulers still do), and keep the converted files from sliding back to reading
positions.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pickle
import typing
from pathlib import Path

import pytest

from anyray.adapters.node import messages as m
from anyray.events import TaskRecord

ROOT = Path(__file__).resolve().parent.parent
TYPES = m.TYPES
TAGS = {name: value for name, value in vars(m).items() if name.isupper() and type(value) is int
        and name not in {"OBJECT", "HANDLE"}}

# Files whose ends are converted: they build messages as their types and read them by name.
CONVERTED = sorted(str(path.relative_to(ROOT)) for package in ("adapters/node", "adapters/cluster")
                   for path in (ROOT / package).glob("*.py"))  # every end of the wire, on every side


def _sample(cls, seed: int) -> tuple:
    """Distinct picklable values, one per field, so a field read from the wrong position shows."""
    return tuple(f"{name}={seed}" for name in cls._fields)


def test_every_message_type_is_listed():
    listed = [v for v in vars(m).values() if isinstance(v, type) and issubclass(v, tuple) and hasattr(v, "_fields")]
    assert listed == TYPES and len(TYPES) > 30


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_pack_builds_the_plain_tuple_of_the_fields_in_order(cls):
    values = _sample(cls, 2)
    assert list(inspect.signature(cls.pack).parameters) == list(cls._fields)
    packed = cls.pack(*values)
    assert type(packed) is tuple and packed == tuple(cls(*values)) == cls.pack(**dict(zip(cls._fields, values)))


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_each_type_survives_the_wire_as_a_plain_tuple(cls):
    msg = cls(*_sample(cls, 1))
    data = m.dumps((None, cls.pack(*msg)))
    assert b"messages" not in data  # the plain tuple travels, not the class
    refs, body = pickle.loads(data)
    assert type(body) is tuple
    back = cls._make(body)
    assert back == msg
    for name, value in zip(cls._fields, _sample(cls, 1)):
        assert getattr(back, name) == value


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_a_body_of_the_wrong_length_is_refused(cls):
    with pytest.raises(TypeError):
        cls._make(_sample(cls, 1) + ("extra",))


def test_every_tag_has_one_body_and_tags_are_unique():
    assert len(set(TAGS.values())) == len(TAGS), "two tags share a value"
    for name, tag in TAGS.items():
        assert (tag in m.TYPE_OF_TAG) != (tag in m.BARE_BODY), f"{name} needs exactly one body entry"
    assert set(m.TYPE_OF_TAG) | set(m.BARE_BODY) == set(TAGS.values())
    assert len(set(m.TYPE_OF_TAG.values())) == len(m.TYPE_OF_TAG), "one type per tag"
    assert m.ENVELOPED <= set(TAGS.values())


def test_field_names_are_unique_and_types_are_named_once():
    names = [cls.__name__ for cls in TYPES]
    assert len(names) == len(set(names))
    for cls in TYPES:
        assert len(cls._fields) == len(set(cls._fields)), cls
    for op, cls in m.OP_TYPES.items():
        assert cls in TYPES, op


def test_types_that_extend_another_keep_its_fields_first():
    assert m.Forward._fields[:len(m.Submit._fields)] == m.Submit._fields
    assert m.Forward._fields[len(m.Submit._fields):] == ("job", "where")
    assert m.CreateActorHere._fields[:len(m.CreateActor._fields)] == m.CreateActor._fields
    assert m.CreateActorHere._fields[len(m.CreateActor._fields):] == ("job", "restarts")
    assert m.GotWithRefs._fields[:2] == m.Got._fields
    assert m.ContainedAt._fields[:2] == m.Contained._fields


def test_a_generator_s_stream_travels_last_and_its_objects_have_a_message_of_their_own():
    """A task and an actor call end with their ``stream`` (None for an ordinary one); an object of a
    stream goes to a node as the "stream_put" op, and from the node that runs a generator back to the
    node that handed it there as a STREAM, both a ``StreamPut``."""
    assert m.Task._fields[-1] == "stream" and m.ActorCall._fields[-1] == "stream"
    assert m.StreamPut._fields == ("generator_id", "oid", "wire", "contained")
    assert m.OP_TYPES["stream_put"] is m.StreamPut and m.TYPE_OF_TAG[m.STREAM] is m.StreamPut
    assert m.STREAM not in m.ENVELOPED  # node -> node, as a RESPONSE goes: no reference changes ahead of it
    body = m.StreamPut.pack(b"g", b"item", m.Inline.pack(b"data", [b"buffer"]), [m.Contained.pack(m.OBJECT, b"o")])
    put = m.StreamPut._make(pickle.loads(m.dumps(body)))
    assert (put.generator_id, put.oid, m.Inline._make(put.wire).buffers, m.Contained._make(put.contained[0]).id) \
        == (b"g", b"item", [b"buffer"], b"o")


def test_a_record_row_is_a_task_record():
    assert m.RecordRow._fields == tuple(f.name for f in dataclasses.fields(TaskRecord))
    row = m.RecordRow(b"t", "f", "task", 1.0, 2.0, 3, 4, None, None)
    assert TaskRecord(*row).name == "f"


def test_client_hello_names_the_keys_the_daemon_reads():
    assert set(typing.get_type_hints(m.ClientHello)) == {"pid", "host", "role", "job_id", "namespace"}


def test_contained_ids_are_kind_and_id():
    class Ref:
        def __init__(self, oid):
            self._id = oid

    class Handle:
        _actor_id = b"a"

    assert [m.Contained._make(c) for c in m.contained_ids([Ref(b"o"), Handle()])] == \
        [m.Contained(m.OBJECT, b"o"), m.Contained(m.HANDLE, b"a")]


MESSAGE_NAMES = {"body", "args", "changes"}  # what the ends call a message body, a request's arguments, RefChanges
ROW_LISTS = {"contained", "output"}  # lists of messages (Contained, OutputLine), read one row at a time


def _positional_reads(path: Path) -> list[str]:
    """Where a converted file goes back to positions: a tuple unpacked from ``loads(...)`` or from a message
    body, request arguments or reference changes, the rows of a list of messages unpacked in a loop, a
    constant index into a message, or one spread into a call (``f(*args)``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "attr", getattr(value.func, "id", "")) == "loads":
                found.append(f"{path.name}:{node.lineno} unpacks loads(...)")
            if isinstance(value, ast.Name) and value.id in MESSAGE_NAMES:
                found.append(f"{path.name}:{node.lineno} unpacks {value.id}")
        if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and isinstance(node.iter, ast.Name) \
                and node.iter.id in ROW_LISTS:
            found.append(f"{path.name}:{node.lineno} unpacks the rows of {node.iter.id}")
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
                and node.value.id in MESSAGE_NAMES and isinstance(node.slice, ast.Constant):
            found.append(f"{path.name}:{node.lineno} {node.value.id}[{node.slice.value!r}]")
    found += _spread_messages(path)
    return found


def _spread_messages(path: Path) -> list[str]:
    """``f(*args)`` where ``args`` is a message's (not the function's own ``*args`` parameter)."""
    found = []

    def visit(node, varargs: frozenset) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            own = {node.args.vararg.arg} if node.args.vararg else set()
            varargs = (varargs - {a.arg for a in node.args.args + node.args.kwonlyargs}) | own
        if isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Starred) and isinstance(arg.value, ast.Name) \
                        and arg.value.id in MESSAGE_NAMES and arg.value.id not in varargs:
                    found.append(f"{path.name}:{node.lineno} spreads *{arg.value.id}")
        for child in ast.iter_child_nodes(node):
            visit(child, varargs)

    visit(ast.parse(path.read_text()), frozenset())
    return found


def test_the_guard_sees_each_way_back_to_positions(tmp_path):
    """The shapes the node's ends read with before they were converted."""
    old = tmp_path / "old.py"
    old.write_text("def on_message(payload, body, args, f):\n"
                   "    changes, body = pickle.loads(payload)\n"
                   "    rid, op, args = body\n"
                   "    cause = body[1]\n"
                   "    objects, handles, unpins = changes\n"
                   "    for kind, ident in contained:\n"
                   "        pass\n"
                   "    f(*args)\n"
                   "def run_entry(name, *args):\n"
                   "    return call(name)(*args)  # a function's own *args: not a message\n")
    hits = sorted(_positional_reads(old), key=lambda hit: int(hit.split(" ", 1)[0].split(":")[1]))
    assert [hit.split(" ", 1)[1] for hit in hits] == \
        ["unpacks loads(...)", "unpacks body", "body[1]", "unpacks changes", "unpacks the rows of contained",
         "spreads *args"]


def test_converted_files_read_messages_by_name():
    files = [ROOT / rel for rel in CONVERTED]
    assert [path for path in files if not path.exists()] == [], "a converted file moved: update CONVERTED"
    found = [hit for path in files for hit in _positional_reads(path)]
    assert found == [], "read a message with Type._make(body) and its fields by name"


SHIMS = {"anyray.adapters.node.protocol", "anyray.adapters.node.workers", "anyray.adapters.node.worker"}


def _imported_modules(path: Path, package: str) -> set[str]:
    """The modules ``path`` (in ``package``) imports, absolute, ``from x import y`` counted as both x and x.y."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def test_the_old_modules_are_gone_and_nothing_imports_them():
    """``protocol`` (now ``messages``), ``workers`` (now ``framing`` and ``pool``) and ``worker`` (now
    ``worker_main``) were split by the process they run in."""
    roots = {"adapters": "anyray.adapters", "core": "anyray", "plugins": None, "tests": None}
    found = []
    for rel, package in roots.items():
        for path in sorted((ROOT / rel).rglob("*.py")):
            sub = package and ".".join([package, *path.relative_to(ROOT / rel).parent.parts])
            hits = _imported_modules(path, sub or "") & SHIMS
            found += [f"{path.relative_to(ROOT)} imports {hit}" for hit in sorted(hits)]
    assert found == []
    assert [name for name in ("protocol", "workers", "worker") if (ROOT / f"adapters/node/{name}.py").exists()] == []
