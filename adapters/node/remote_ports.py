"""The ports of a runtime whose node is elsewhere: every call becomes a request over a ``Link``.

A worker's runtime uses them (``worker_main.WorkerBackend``), and so does a
driver connected to a cluster's node daemon.
"""

from __future__ import annotations

import cloudpickle

from anyray.context import current_task
from anyray.exceptions import ActorNameTaken, GetTimeoutError
from anyray.generators import stream_of
from anyray.ports.object_store import ObjectStore
from anyray.ports.scheduler import Scheduler
from anyray.serialization import portable_classes

from . import messages as m
from .remote_watch import RemoteWatch

BACKPRESSURE = "_generator_backpressure_num_objects"  # the option Ray names it by


class RemoteStore(ObjectStore):
    def __init__(self, node):
        self.node = node

    def put(self, ref, obj) -> None:
        node = self.node
        wire = node.to_node(obj)
        node.tell("put", m.Put.pack(ref._id, wire, m.contained_ids(obj.contained_refs)))

    def put_stream(self, generator_id, ref, obj) -> None:
        """An object of generator ``generator_id``'s stream (an item, its count, an ack): the node stores it
        where that stream's producer or consumer reads it (a cluster node may send it to another node)."""
        node = self.node
        wire = node.to_node(obj)
        node.tell("stream_put", m.StreamPut.pack(generator_id, ref._id, wire, m.contained_ids(obj.contained_refs)))

    def get(self, refs, timeout):
        return self.node.get([r._id for r in refs], timeout)

    def wait(self, refs, num_returns, timeout):
        ids = [r._id for r in refs]
        blocking = current_task.get() is not None
        try:
            return set(self.node.request("wait", m.Wait.pack(ids, num_returns, timeout != 0, blocking), timeout))
        except GetTimeoutError:
            return set(self.node.request("wait", m.Wait.pack(ids, num_returns, False, False)))

    def watch(self, ids):
        """A wait loop's ready index (``anyray.waiting``), kept by the node (``remote_watch.py``)."""
        return RemoteWatch(self.node, ids)

    def contains(self, ref) -> bool:
        return False  # asking costs a round trip; get() asks once anyway

    def free(self, refs) -> None:
        node = self.node
        for r in refs:
            node.released(r if isinstance(r, bytes) else r._id)

    def usage(self) -> dict:
        return self.node.request("usage", None)


def call_options(options: dict) -> dict:
    """What a node and a worker need of an actor call's options (not its method's signature, which is
    costly to pickle): its retries, and for a generator method its ``num_returns`` and backpressure."""
    out = {"retry_exceptions": portable_classes(options.get("retry_exceptions", False)),
           "max_task_retries": options.get("max_task_retries")}
    if options.get("concurrency_group") is not None:
        out["concurrency_group"] = options["concurrency_group"]
    if stream_of(options) is not None:
        out["num_returns"] = options["num_returns"]
        out[BACKPRESSURE] = options.get(BACKPRESSURE, -1)
    return out


def portable_options(options: dict) -> dict:
    """``options`` with their ``retry_exceptions`` as ``portable_classes`` makes them: the node reads the
    message whether or not it can import those classes (the worker that runs the task loads them)."""
    retry = options.get("retry_exceptions")
    return dict(options, retry_exceptions=portable_classes(retry)) if type(retry) is tuple else options


class RemoteScheduler(Scheduler):
    tracks_handles = True  # capability flags (lends_cpus: the node lends while a get waits)

    def __init__(self, node):
        self.node = node

    def submit_task(self, spec) -> None:
        node = self.node
        fn = spec.function
        blob = node.export(fn)
        node.tell("submit", m.Submit.pack(
            spec.task_id, fn.function_id, fn.name, blob, node.to_node(spec.args), [r._id for r in spec.deps],
            [r._id for r in spec.returns], spec.resources, portable_options(spec.options), spec.parent_task_id,
            spec.name, m.contained_ids(spec.args.contained_refs)))
        node.exported_with(fn, blob)

    def create_actor(self, spec):
        node = self.node
        cls = spec.cls
        blob = node.export(cls)
        winner = node.request("create_actor", m.CreateActor.pack(
            spec.actor_id, cls.function_id, cls.name, blob, node.to_node(spec.args),
            [r._id for r in spec.deps], spec.resources, spec.options, spec.namespace, spec.is_async,
            {name: portable_options(meta) for name, meta in spec.method_options.items()},
            m.contained_ids(spec.args.contained_refs)))
        node.exported_with(cls, blob)
        if winner is not None:
            raise ActorNameTaken(cloudpickle.loads(winner))  # get_if_exists lost the race

    def submit_actor_task(self, spec) -> None:
        self.node.tell("actor_call", m.CallActor.pack(
            spec.task_id, spec.actor_id, spec.method_name, self.node.to_node(spec.args),
            [r._id for r in spec.deps], [r._id for r in spec.returns], spec.caller_id, spec.seq,
            call_options(spec.options), spec.name, m.contained_ids(spec.args.contained_refs)))

    def get_named_actor(self, name, namespace):
        return cloudpickle.loads(self.node.request("named", m.Named.pack(name, namespace)))

    def list_named_actors(self, namespace):
        return self.node.request("list_named", namespace)

    def kill_actor(self, actor_id, no_restart) -> None:
        self.node.tell("kill", m.Kill.pack(actor_id, no_restart))

    def cancel(self, ref, force, recursive) -> None:
        self.node.tell("cancel", m.CancelRef.pack(ref._id, force, recursive))

    def actor_handles_gone(self, actor_id) -> None:
        self.node.handle_released(actor_id)

    def cluster_resources(self):
        return self.node.request("resources", "total")

    def available_resources(self):
        return self.node.request("resources", "available")

    def nodes(self):
        return self.node.request("resources", "nodes")
