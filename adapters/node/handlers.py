"""The requests workers and drivers send a node (``REQUEST``): one handler table, which a node's owner
(the cluster daemon) and the cluster's parts register more requests into.

A worker blocked in ``get`` or ``wait`` lends its CPUs until the answer goes
out (``_lend``, ``_reclaim``).
"""

from __future__ import annotations

import cloudpickle

from anyray.exceptions import GetTimeoutError, WorkerCrashedError
from anyray.object_ref import ObjectRef
from anyray.runtime import current_counter
from anyray.specs import ActorSpec, ActorTaskSpec, TaskSpec

from . import messages as m
from .interning import LastShared
from .store import ArenaObject
from .wait_watches import WaitWatches

LATER = object()  # a request handler that answers by itself, later


class Requests:
    """``handlers``: op -> ``handler(worker, rid, args)``, whose return value is the answer (``LATER``: the
    handler answers by itself, with ``respond``). ``cancel(ref, force, recursive)`` is the node's."""

    def __init__(self, lock, pool, store, queues, ledger, functions, tasks, actors, names, seams, cancel):
        self._lock = lock
        self._pool = pool
        self._store = store
        self._dispatch = queues.dispatch
        self._ledger = ledger
        self._functions = functions
        self._tasks = tasks
        self._actors = actors
        self._names = names
        self._seams = seams
        self._cancel = cancel
        # each pending task from another process would hold its own decoded options and resources
        self._same_options, self._same_resources = LastShared().share, LastShared().share
        self.handlers: dict = {
            "abandon": self._op_abandon, "get": self._op_get, "wait": self._op_wait, "put": self._op_put,
            "put_kept": self._op_put_kept, "stream_put": self._op_stream_put, "alloc": self._op_alloc,
            "submit": self._op_submit,
            "create_actor": self._op_create_actor, "actor_call": self._op_actor_call, "named": self._op_named,
            "list_named": self._op_list_named, "kill": self._op_kill, "cancel": self._op_cancel,
            "resources": self._op_resources, "usage": self._op_usage}
        self.handlers["wait_watch"] = WaitWatches(store, self.respond, self._lend, self._reclaim, LATER,
                                                  self._prefetch).serve

    def _prefetch(self, ids) -> None:
        """Start pulling the objects of ``ids`` that live on other nodes (a cluster node's seam)."""
        if self._seams.objects is not None:
            self._seams.objects.prefetch(ids)

    def register(self, op: str, handler) -> None:
        """Serve request ``op`` with ``handler(worker, rid, args)``."""
        self.handlers[op] = handler

    def on_request(self, worker, body) -> None:
        request = m.Request._make(body)
        rid = request.rid
        try:
            handler = self.handlers.get(request.op)
            if handler is None:
                raise AttributeError(f"This node serves no request {request.op!r}.")
            value = handler(worker, rid, request.args)
        except Exception as exc:  # noqa: BLE001 - the error goes back to the worker's call site
            if rid:
                self.respond(worker, rid, False, exc)
            return
        if rid and value is not LATER:
            self.respond(worker, rid, True, value)

    def respond(self, worker, rid: int, ok: bool, value) -> None:
        try:
            body = m.dumps(m.Response.pack(rid, ok, value))
        except Exception as exc:  # noqa: BLE001 - an answer that cannot travel becomes an error
            body = m.dumps(m.Response.pack(rid, False, RuntimeError(f"The answer could not be pickled: {exc!r}")))
        try:
            worker.handle.send(m.RESPONSE, body)
        except WorkerCrashedError:
            pass

    def _lend(self, worker, rid: int) -> None:
        """The worker's request ``rid`` waits: lend the CPUs of what it runs until ``_reclaim(rid)``."""
        lease = worker.task.lease if worker.task is not None else worker.actor.lease if worker.actor else None
        with self._lock:
            worker.blocked.add(rid)
            if len(worker.blocked) > 1 or lease is None:
                return
        self._pool.lend_cpus(lease)
        self._dispatch()

    def _reclaim(self, worker, rid: int) -> None:
        lease = worker.task.lease if worker.task is not None else worker.actor.lease if worker.actor else None
        with self._lock:
            if rid not in worker.blocked:
                return
            worker.blocked.discard(rid)
            if worker.blocked or lease is None:
                return
        self._pool.reclaim_cpus(lease)

    def _op_abandon(self, worker, rid: int, abandoned: int):
        self._reclaim(worker, abandoned)  # its answer still goes out when ready; the worker drops it

    def _op_get(self, worker, rid: int, args):
        get = m.Get._make(args)
        ids = get.ids
        if self._seams.objects is not None:
            self._seams.objects.prefetch(ids)
        store = self._store

        def answer():
            return self._ledger.answer(worker, ids)

        missing = set(ids).difference(store.ready(ids))
        if not missing:
            return answer()
        if get.now:
            raise GetTimeoutError(f"get() timed out after 0 s: {len(missing)} of {len(ids)} objects are not ready. "
                                  f"Raise the timeout, or use wait() to take what is ready.")
        if get.blocking:
            self._lend(worker, rid)

        def later():
            self._reclaim(worker, rid)
            self.respond(worker, rid, True, answer())
        store.when_sealed(missing, None, later)
        return LATER

    def _op_wait(self, worker, rid: int, args):
        wait = m.Wait._make(args)
        ids = wait.ids
        if self._seams.objects is not None:
            self._seams.objects.prefetch(ids)
        store = self._store
        ready = store.ready(ids)
        if len(ready) >= wait.num_returns or not wait.may_wait:
            return ready
        if wait.blocking:
            self._lend(worker, rid)

        def later():
            self._reclaim(worker, rid)
            self.respond(worker, rid, True, store.ready(ids))
        store.when_sealed(set(ids), wait.num_returns, later)
        return LATER

    def _op_put(self, worker, rid: int, args):
        put = m.Put._make(args)
        self._ledger.seal_wires(worker, [put.oid], [put.wire], [put.contained])

    def _op_stream_put(self, worker, rid: int, args):
        """An object of a generator's stream: sealed here, as a put (a cluster node registers its own
        handler, which sends it on to the node where the stream's other end is)."""
        put = m.StreamPut._make(args)
        self._ledger.seal_wires(worker, [put.oid], [put.wire], [put.contained])

    def _op_put_kept(self, worker, rid: int, args):
        """A put whose writer keeps reading the object in place: its range is pinned for the writer, as
        for a ``get`` (the writer unpins when its views are gone)."""
        put = m.Put._make(args)
        self._ledger.seal_wires(worker, [put.oid], [put.wire], [put.contained])
        entry = self._store.entry(put.oid)
        if type(entry) is ArenaObject:
            self._ledger.wire(worker, put.oid, entry)

    def _op_alloc(self, worker, rid: int, nbytes: int):
        return self._ledger.alloc(worker, nbytes)

    def _op_submit(self, worker, rid: int, args):
        submit = m.Submit._make(args)
        counter = current_counter()
        call_args, held = self._ledger.args_from(worker, submit.args, submit.contained)
        function = self._functions.descriptor(worker, submit.fn_id, submit.fn_name, submit.blob)
        spec = TaskSpec(task_id=submit.task_id, function=function, args=call_args,
                        deps=[ObjectRef(i, None, counter) for i in submit.dep_ids],
                        returns=[ObjectRef(i, None, counter) for i in submit.return_ids],
                        resources=self._same_resources(submit.fn_id, submit.resources),
                        options=self._same_options(submit.fn_id, submit.options), parent_task_id=submit.parent,
                        name=submit.name)
        self._tasks.submit(spec, held, worker.job)

    def _op_create_actor(self, worker, rid: int, args):
        create = m.CreateActor._make(args)
        call_args, held = self._ledger.args_from(worker, create.args, create.contained)
        counter = current_counter()
        cls = self._functions.descriptor(worker, create.cls_id, create.cls_name, create.blob)
        spec = ActorSpec(actor_id=create.actor_id, cls=cls, args=call_args,
                         deps=[ObjectRef(i, None, counter) for i in create.dep_ids], resources=create.resources,
                         options=create.options, namespace=create.namespace, is_async=create.is_async,
                         method_options=create.method_options)
        winner = self._actors.create_actor(spec, held, worker.job)
        if winner is None:
            return None
        worker.handles.setdefault(winner._actor_id, winner)
        return cloudpickle.dumps(winner)  # get_if_exists lost the race: the caller gets the winner's actor

    def _op_actor_call(self, worker, rid: int, args):
        call = m.CallActor._make(args)
        call_args, held = self._ledger.args_from(worker, call.args, call.contained)
        counter = current_counter()
        spec = ActorTaskSpec(task_id=call.task_id, actor_id=call.actor_id, method_name=call.method, args=call_args,
                             deps=[ObjectRef(i, None, counter) for i in call.dep_ids],
                             returns=[ObjectRef(i, None, counter) for i in call.return_ids], caller_id=call.caller_id,
                             seq=call.seq, options=call.options, name=call.name)
        self._actors.submit_actor_task(spec, held)

    def _op_named(self, worker, rid: int, args):
        named = m.Named._make(args)
        handle = self._actors.get_named_actor(named.name, named.namespace)
        if handle is not None:
            worker.handles.setdefault(handle._actor_id, handle)
        return cloudpickle.dumps(handle)

    def _op_list_named(self, worker, rid: int, namespace):
        return self._names.list(namespace)

    def _op_kill(self, worker, rid: int, args):
        kill = m.Kill._make(args)
        self._actors.kill_actor(kill.actor_id, kill.no_restart)

    def _op_cancel(self, worker, rid: int, args):
        cancel = m.CancelRef._make(args)
        self._cancel(ObjectRef(cancel.oid), cancel.force, cancel.recursive)

    def _op_resources(self, worker, rid: int, kind: str):
        view = self._seams.resource_view
        return {"total": view.cluster_resources, "available": view.available_resources,
                "nodes": view.nodes}[kind]()

    def _op_usage(self, worker, rid: int, args):
        return self._store.usage()
