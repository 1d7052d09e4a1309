"""Every adapter of a port implements it as the port declares it (after ibis's ``test_signatures.py``).

For each adapter class of the scheduler ports, the object store, the metadata
store (and its watches) and the backend, built in or a plugin's (imported only
where the plugin is installed):

1. it implements every abstract method of its ports;
2. each port method it defines has the port's parameter names, kinds and
   defaults (annotations aside); it may add parameters of its own after them,
   each with a default, which the core never passes;
3. no required method is implemented as only ``pass``, a docstring or ``...``;
4. an optional method (see ``anyray.ports.scheduler.OPTIONAL_METHODS`` and
   ``OPTIONAL_STORE_METHODS``) is defined exactly where its capability flag is True;
5. ``create_actor`` has one return type: a lost ``get_if_exists`` race raises
   ``ActorNameTaken``, it does not return the winner's ``ActorHandle``.

The allowlists below hold what other parts of the code still do the old way;
they fail both ways, so an entry goes the moment its code is fixed.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import textwrap

import pytest

from anyray.ports import (
    ActorPort,
    Backend,
    ClusterInfoPort,
    MetadataStore,
    ObjectStore,
    PlacementGroupPort,
    StatePort,
    TaskPort,
    Watch,
)
from anyray.ports.scheduler import OPTIONAL_METHODS, OPTIONAL_STORE_METHODS, Scheduler

SCHEDULERS = [
    "anyray.adapters.local.scheduler:LocalScheduler",
    "anyray.adapters.node.scheduler:NodeScheduler",
    "anyray.adapters.node.scheduler:GroupNodeScheduler",
    "anyray.adapters.node.remote_groups:GroupsRemoteScheduler",
    "anyray.adapters.cluster.node:ClusterScheduler",
    "anyray.adapters.node.remote_ports:RemoteScheduler",
    "anyray.adapters.cluster.driver_side:_ClusterScheduler",
    "anyray_ray.scheduler:RayScheduler",
    "anyray_dask.scheduler:DaskScheduler",
]
OBJECT_STORES = [
    "anyray.adapters.common.object_store:MemoryObjectStore",
    "anyray.adapters.node.store:SharedObjectStore",
    "anyray.adapters.node.remote_ports:RemoteStore",
    "anyray.adapters.cluster.driver_side:_ClusterStore",
    "anyray_ray.object_store:RayObjectStore",
    "anyray_dask.object_store:DaskObjectStore",
]
METADATA_STORES = [
    "anyray.adapters.metadata.memory:MemoryMetadataStore",
    "anyray.adapters.metadata.redis:RedisMetadataStore",
    "anyray.adapters.metadata.etcd:EtcdMetadataStore",
    "anyray_ray.metadata:RayKVMetadataStore",
    "anyray_dask.metadata:DaskMetadataStore",
]
WATCHES = [
    "anyray.adapters.metadata.memory:_MemoryWatch",
    "anyray.adapters.metadata.redis:_RedisWatch",
    "anyray.adapters.metadata.etcd:_EtcdWatch",
    "anyray.backend_kit.polling:PollingWatch",
]
BACKENDS = [
    "anyray.adapters.local:LocalBackend",
    "anyray.adapters.multiprocess:MultiprocessBackend",
    "anyray.adapters.cluster:ClusterBackend",
    "anyray.adapters.cluster.daemon:_NodeBackend",
    "anyray.adapters.node.worker_main:WorkerBackend",
    "anyray_ray:RayBackend",
    "anyray_dask:DaskBackend",
]
ALL = [(path, port) for paths, port in [(SCHEDULERS, Scheduler), (OBJECT_STORES, ObjectStore),
                                         (METADATA_STORES, MetadataStore), (WATCHES, Watch), (BACKENDS, Backend)]
       for path in paths]

# Required methods with nothing to do, on purpose: "Class.method" -> why.
EMPTY_ON_PURPOSE = {
    "WorkerBackend.shutdown": "a worker's backend starts nothing: the worker process's main closes its link",
}

PORT_CLASSES = {TaskPort, ActorPort, ClusterInfoPort, PlacementGroupPort, StatePort, Scheduler, ObjectStore,
                MetadataStore, Watch, Backend}


def _load(path: str) -> type:
    module, _, name = path.partition(":")
    if module.startswith(("anyray_ray", "anyray_dask")):
        pytest.importorskip(module.split(".")[0])
    return getattr(importlib.import_module(module), name)


def _port_methods(port: type) -> dict[str, object]:
    """The public methods the port (and the ports it joins) declare, by name, with the port's function."""
    out = {}
    for klass in reversed(port.__mro__):
        if klass in PORT_CLASSES:
            for name, value in vars(klass).items():
                if inspect.isfunction(value) and not name.startswith("_"):
                    out[name] = value
    return out


def _defining_class(cls: type, name: str) -> type:
    return next(k for k in cls.__mro__ if name in vars(k))


def _implemented(cls: type, name: str) -> bool:
    """Whether an adapter class (not a port) defines ``name`` for ``cls``."""
    return _defining_class(cls, name) not in PORT_CLASSES


def _function_node(fn) -> ast.FunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    return tree.body[0]


def _is_empty(fn) -> bool:
    body = _function_node(fn).body
    return all(isinstance(stmt, ast.Pass) or (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
               for stmt in body)


def _ids(pairs):
    return [path.rpartition(":")[2] for path, _ in pairs]


@pytest.mark.parametrize(("path", "port"), ALL, ids=_ids(ALL))
def test_every_abstract_method_is_implemented(path, port):
    cls = _load(path)
    assert issubclass(cls, port), f"{cls.__name__} is not a {port.__name__}"
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    assert not missing, f"{cls.__name__} leaves abstract: {', '.join(missing)}"


def _shape(sig: inspect.Signature) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


@pytest.mark.parametrize(("path", "port"), ALL, ids=_ids(ALL))
def test_port_methods_keep_the_ports_parameters(path, port):
    cls = _load(path)
    wrong = []
    for name, declared in _port_methods(port).items():
        if not _implemented(cls, name):
            continue
        want = _shape(inspect.signature(declared))
        have = _shape(inspect.signature(getattr(cls, name)))
        extra = have[len(want):]
        if have[:len(want)] != want or any(default is inspect.Parameter.empty for _, _, default in extra):
            wrong.append(f"{_defining_class(cls, name).__name__}.{name}{inspect.signature(getattr(cls, name))} "
                         f"!= {port.__name__}.{name}{inspect.signature(declared)}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(("path", "port"), ALL, ids=_ids(ALL))
def test_no_required_method_is_an_empty_body(path, port):
    cls = _load(path)
    required = {name for name, fn in _port_methods(port).items() if getattr(fn, "__isabstractmethod__", False)}
    empty = [f"{_defining_class(cls, name).__name__}.{name}" for name in sorted(required)
             if _implemented(cls, name) and _is_empty(getattr(cls, name))]
    empty = [name for name in empty if name not in EMPTY_ON_PURPOSE]
    assert not empty, f"required methods implemented as only pass/docstring/...: {', '.join(empty)}"


def test_the_empty_on_purpose_allowlist_is_exact():
    for entry in EMPTY_ON_PURPOSE:
        path = next(p for p, _ in ALL if p.endswith(":" + entry.partition(".")[0]))
        cls = _load(path)
        assert _is_empty(getattr(cls, entry.partition(".")[2])), f"{entry} does work now: drop it from the list"


OPTIONAL = [(path, OPTIONAL_METHODS) for path in SCHEDULERS] + \
    [(path, OPTIONAL_STORE_METHODS) for path in OBJECT_STORES]


@pytest.mark.parametrize(("path", "optional"), OPTIONAL, ids=_ids(OPTIONAL))
def test_optional_methods_are_defined_exactly_where_their_flag_is_true(path, optional):
    cls = _load(path)
    wrong = []
    for flag, methods in optional.items():
        declared = getattr(cls, flag)
        assert isinstance(declared, bool), f"{cls.__name__}.{flag} must be a bool, got {declared!r}"
        for name in methods:
            defined = _implemented(cls, name)
            if defined != declared:
                wrong.append(f"{cls.__name__}.{name} is {'defined' if defined else 'not defined'} but "
                             f"{flag} = {declared}")
    assert not wrong, "\n".join(wrong)


def _returns_the_winner(fn) -> bool:
    names = {"winner", "forwarded", "existing"}
    return any(isinstance(node, ast.Return) and node.value is not None
               and any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node.value))
               for node in ast.walk(_function_node(fn)))


def test_create_actor_has_one_return_type():
    returning = set()
    for path in SCHEDULERS:
        try:
            cls = _load(path)
        except pytest.skip.Exception:
            continue
        for klass in cls.__mro__:
            fn = vars(klass).get("create_actor")
            if fn is None or klass in PORT_CLASSES:
                continue
            annotation = inspect.signature(fn).return_annotation
            assert "ActorHandle" not in str(annotation), \
                f"{klass.__name__}.create_actor returns {annotation}: raise ActorNameTaken(handle) instead"
            if _returns_the_winner(fn):
                returning.add(klass.__name__)
    assert not returning, f"create_actor returns get_if_exists' winner in {sorted(returning)}: raise ActorNameTaken"


def test_a_port_method_that_is_optional_raises_when_called_without_its_flag():
    class Bare(Scheduler):
        submit_task = cancel = create_actor = submit_actor_task = kill_actor = get_named_actor = \
            list_named_actors = cluster_resources = available_resources = nodes = (lambda *a: None)

    class Kept(ObjectStore):
        put = get = wait = contains = usage = (lambda *a: None)
        frees_objects = False

    bare = Bare()
    for obj, optional in [(bare, OPTIONAL_METHODS), (Kept(), OPTIONAL_STORE_METHODS)]:
        for flag, methods in optional.items():
            assert getattr(obj, flag) is False
            for name in methods:
                with pytest.raises(NotImplementedError, match=flag):
                    getattr(obj, name)(*([None] * (len(inspect.signature(getattr(obj, name)).parameters))))
