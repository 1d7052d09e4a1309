"""The Scheduler port on Dask: specs become Dask tasks and Dask actors.

- A task spec is one ``client.submit`` of :func:`~anyray_dask.worker.run_task`
  with the task's top-level dependencies as Dask futures, so Dask starts it
  once they exist and hands their values over. Each of ``spec.returns`` gets
  a :class:`~anyray_dask.transport.DaskRef` of the task's future (one small
  Dask task per return when there are several).
- Every submission is ``fire_and_forget`` as well: Ray runs a task whose
  refs were all dropped (``signal.send.remote()``), where Dask would forget it.
- Resources: Dask has no CPU resource; a worker runs ``nthreads`` tasks at
  once, and a task blocked in ``get``/``wait`` leaves the thread pool
  (``secede``) so nested waits cannot deadlock. ``num_gpus`` becomes the
  Dask worker resource ``GPU`` and custom resources become Dask worker
  resources of the same name, held while the task runs.
- An actor spec is a Dask actor (:class:`~anyray_dask.worker.ActorProcess`)
  placed by Dask where its resources are; a method call is one Dask task
  (:func:`~anyray_dask.worker.deliver`). Named actors are Dask published
  datasets, which keep the actor alive while the name is held.
- Node affinity becomes Dask worker restrictions (see ``placement``); placement
  groups are not mapped.
"""

from __future__ import annotations

import functools
import threading

from anyray.backend_kit import (
    STREAMING,
    ActorHandle,
    ActorSpec,
    ActorTaskSpec,
    Feasibility,
    Scheduler,
    TaskSpec,
    engine_text,
    stream_of,
)
from anyray.exceptions import ActorDiedError, ActorNameTaken

from .placement import NoPlacementGroups, UnschedulableActor, failed_payload, node_id_of, place
from .state import DaskState
from .transport import DaskRef, InlineRef, lookup_actor, nested_natives, pack, register_actor
from .worker import (
    Exported,
    Session,
    deliver,
    job_prefix,
    method_call,
    pick,
    portable_options,
    rejoin,
    run_task,
    secede_once,
    task_call,
)

ARGS_INLINE = 1 << 20  # pickled arguments up to this size travel inside the task
NAMES = "anyray-actor"  # published datasets "anyray-actor/<namespace>/<name>"
CALL_PREFIX = "call-"  # the keys of actor calls, which hold no CPU (they leave the thread pool at once)


def dask_resources(demand: dict) -> dict | None:
    """The Dask worker resources for an anyray demand: GPUs and custom resources; CPUs are threads."""
    out = {k: v for k, v in demand.items() if k not in ("CPU", "memory") and v}
    return out or None


def _key(kind: str, name: str, ident: bytes) -> str:
    short = name.rsplit(".", 1)[-1] or kind
    prefix = CALL_PREFIX if kind == "call" else ""
    return f"{prefix}{short}-{ident.hex()}"


class DaskScheduler(NoPlacementGroups, DaskState, Scheduler):
    """Submission methods return once Dask has the work; safe from any thread."""

    lends_cpus = True  # a task waiting in get/wait secedes from its Dask worker's thread pool

    def __init__(self, client, session: Session, metadata, in_worker: bool = False):
        self._client = client
        self._metadata = metadata
        self._in_worker = in_worker  # a worker scatters into its own memory, unpickled
        self._session = session
        self._lock = threading.Lock()
        self._exported: dict[bytes, Exported] = {}
        self._feasibility = Feasibility(
            lambda: [_worker_resources(w) for w in client.scheduler_info(n_workers=-1)["workers"].values()],
            engine_text("worker", "the Dask cluster"), refresh=2.0)
        self._sources: dict = {}  # key of a return of num_returns > 1 -> the task's own future, briefly

    def _export(self, descriptor, what: str) -> Exported:
        found = self._exported.get(descriptor.function_id)
        if found is None:
            found = Exported.of(descriptor, what)
            with self._lock:
                self._exported[descriptor.function_id] = found
        return found

    def _args(self, blob):
        """A spec's pickled arguments as they travel: inline, or scattered first when large
        (Dask would send them through the scheduler, inside the task graph)."""
        if sum(memoryview(b).nbytes for b in blob.buffers) + len(blob.data) < ARGS_INLINE:
            return pack(blob, copy=True, refs=False)
        [future] = self._client.scatter([pack(blob, copy=self._in_worker, refs=False)], hash=False)
        return future

    def _submit(self, fn, *args, key: str, keep=None, resources=None, num_returns: int = 1, where=None):
        from distributed import fire_and_forget

        future = self._client.submit(fn, *args, key=key, resources=resources, pure=False, **(where or {}))
        fire_and_forget(future)
        if keep:
            # Refs nested in the arguments live until the task has claimed them (see transport.adopt).
            future.add_done_callback(lambda _, keep=keep: None)
        if num_returns == 1:
            return [future]
        picks = [self._client.submit(pick, future, i, key=f"{key}-{i}", pure=False) for i in range(num_returns)]
        for p in picks:
            self._sources[p.key] = future  # cancel() of any return cancels the task itself
        return picks

    # -- tasks ------------------------------------------------------------
    def submit_task(self, spec: TaskSpec):
        resources = dask_resources(spec.resources)
        if resources:
            self._feasibility.check(spec.function.function_id, spec.name, resources)
        where = place(self._client, spec.options.get("scheduling_strategy"), spec.name)
        if where.error is not None:  # it can run nowhere: its results hold the error, at once
            for ref in spec.returns:
                ref.native = InlineRef(failed_payload(where.error))
            return self._stream(spec, self._channel(spec))
        function = self._export(spec.function, f"the remote function {spec.function.name}")
        channel = self._channel(spec)  # made before the task can put in it
        futures = self._submit(run_task, self._session, function, task_call(spec), self._args(spec.args),
                               *[d.native.future for d in spec.deps], key=_key("task", spec.name, spec.task_id),
                               keep=nested_natives(spec.args), resources=resources, num_returns=len(spec.returns),
                               where=where.restrictions)
        for ref, future in zip(spec.returns, futures):
            ref.native = DaskRef(future, source=self._sources.pop(future.key, None))
        return self._stream(spec, channel)

    def _channel(self, spec):
        """The queues a streaming call's values come through (see ``generators``), or None."""
        stream = stream_of(spec.options)
        if stream is None or stream[0] != STREAMING:
            return None
        from .generators import Channel

        return Channel(self._client, spec.returns[0].binary(), stream[1])

    def _stream(self, spec, channel):
        """What ``submit_*`` returns: the ObjectRefGenerator of a streaming call, else None."""
        if channel is None:
            return None
        from anyray.backend_kit import current_runtime

        from .generators import DaskObjectRefGenerator

        completed = spec.returns[0]
        channel.watch(completed.native.future)
        return DaskObjectRefGenerator(completed, channel, spec.name, current_runtime())

    # -- actors -----------------------------------------------------------
    def create_actor(self, spec: ActorSpec):
        o = spec.options
        resources = dask_resources(spec.resources)
        if resources:
            self._feasibility.check(spec.actor_id, spec.cls.name, resources)
        where = place(self._client, o.get("scheduling_strategy"), spec.cls.name, actor=True)
        if where.error is not None:  # it can run nowhere: a stand-in fails its calls
            future = self._client.submit(UnschedulableActor, where.error, key=_key("actor", spec.cls.name,
                                         spec.actor_id), actor=True, pure=False)
            native = register_actor(spec.actor_id, future)
            if o["name"] is not None:
                self._publish(spec, native)
            return native
        cls = self._export(spec.cls, f"the actor class {spec.cls.name}")
        actor = [spec.actor_id, spec.cls.name, spec.resources, o, spec.namespace, spec.is_async,
                 {name: portable_options(meta) for name, meta in spec.method_options.items()}]
        from .worker import ActorProcess

        future = self._client.submit(ActorProcess, self._session, cls, actor, self._args(spec.args),
                                     [d.binary() for d in spec.deps], *[d.native.future for d in spec.deps],
                                     key=_key("actor", spec.cls.name, spec.actor_id), actor=True,
                                     resources=resources, pure=False, **where.restrictions)
        native = register_actor(spec.actor_id, future)
        native.keep = nested_natives(spec.args) or None  # the constructor claims them when it runs
        if o["name"] is not None:
            self._publish(spec, native)
        return native

    def _publish(self, spec: ActorSpec, native):
        """Take the actor's name; raise ``ActorNameTaken`` with the winner's handle when ``get_if_exists``
        lost a race for it."""
        name = f"{NAMES}/{spec.namespace}/{spec.options['name']}"
        record = (spec.actor_id, spec.cls.name, spec.method_options, native.future)
        try:
            self._client.publish_dataset(record, name=name)
        except KeyError:
            self._client.cancel([native.future], force=True)
            existing = self.get_named_actor(spec.options["name"], spec.namespace) \
                if spec.options["get_if_exists"] else None
            if existing is not None:
                raise ActorNameTaken(existing) from None
            raise ValueError(f"An actor named {spec.options['name']!r} already exists in namespace "
                             f"{spec.namespace!r}. Pick another name, or pass get_if_exists=True to reuse it."
                             ) from None
        if spec.options["lifetime"] != "detached":  # the job's driver unpublishes it when the job ends
            self._metadata.put(f"{job_prefix(self._session.job_id)}names/{name}", b"")

    def submit_actor_task(self, spec: ActorTaskSpec):
        actor = lookup_actor(spec.actor_id)
        if actor is None:
            raise ActorDiedError(f"{spec.name}: no handle of actor {spec.actor_id.hex()} is alive in this process.")
        channel = self._channel(spec)
        futures = self._submit(deliver, actor.future, method_call(spec), self._args(spec.args),
                               *[d.native.future for d in spec.deps], key=_key("call", spec.name, spec.task_id),
                               keep=nested_natives(spec.args), num_returns=len(spec.returns))
        for ref, future in zip(spec.returns, futures):
            self._sources.pop(future.key, None)
            ref.native = DaskRef(future, actor=actor)
        if spec.deps:
            # A call whose argument failed in Dask itself (cancelled, lost) never reaches the actor:
            # tell it, so the caller's later calls do not wait for this one.
            futures[0].add_done_callback(functools.partial(_skip_if_undelivered, actor, spec.caller_id, spec.seq))
        return self._stream(spec, channel)

    def get_named_actor(self, name: str, namespace: str):
        try:
            actor_id, class_name, methods, future = self._client.get_dataset(f"{NAMES}/{namespace}/{name}")
        except KeyError:
            return None
        return ActorHandle(actor_id, class_name, methods, register_actor(actor_id, future))

    def list_named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        out = []
        for dataset in self._client.list_datasets():
            if isinstance(dataset, str) and dataset.startswith(NAMES + "/"):
                ns, _, name = dataset[len(NAMES) + 1:].partition("/")
                if namespace is None or ns == namespace:
                    out.append((ns, name))
        return sorted(out)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        actor = lookup_actor(actor_id)
        if actor is None:
            return
        self._unpublish(actor)
        future = actor.future
        if not future.done():
            self._client.cancel([future], force=True)  # not placed yet: it never starts
            return
        try:
            future.result().anyray_kill(True).result()
        except Exception:  # noqa: BLE001 - an actor whose worker is gone is dead already
            pass

    def _unpublish(self, actor) -> None:
        for dataset in list(self._client.list_datasets()):
            if isinstance(dataset, str) and dataset.startswith(NAMES + "/"):
                try:
                    record = self._client.get_dataset(dataset)
                except KeyError:
                    continue
                if record[0] == actor.actor_id:
                    try:
                        self._client.unpublish_dataset(dataset)
                    except KeyError:
                        pass

    # -- cancel, blocking -------------------------------------------------
    def cancel(self, ref, force: bool, recursive: bool) -> None:
        native = ref.native
        if not isinstance(native, DaskRef) or type(native) is InlineRef or native.future.done():
            return  # a finished task is left alone
        if native.actor is not None:
            # The actor drops the call, queued or still on its way (it then fails on arrival), so the
            # caller's order goes on; Dask's cancel would leave the actor waiting for it.
            _when_placed(native.actor, lambda proxy: proxy.anyray_cancel(ref.binary()).result())
            return
        self._client.cancel([native.source or native.future], force=True)

    def task_blocked(self) -> None:
        secede_once()

    def task_unblocked(self) -> None:
        rejoin()

    # -- cluster state ----------------------------------------------------
    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for worker in self._client.scheduler_info(n_workers=-1)["workers"].values():
            for k, v in _worker_resources(worker).items():
                total[k] = total.get(k, 0) + v
        return total

    def available_resources(self) -> dict[str, float]:
        used = self._client.run_on_scheduler(_used_resources)
        free = self.cluster_resources()
        for k, v in used.items():
            if k in free:
                free[k] = max(free[k] - v, 0.0)
        return free

    def nodes(self) -> list[dict]:
        out = []
        for address, worker in self._client.scheduler_info(n_workers=-1)["workers"].items():
            out.append({"NodeID": node_id_of(address), "Alive": True,
                        "NodeManagerAddress": worker.get("host", address), "Resources": _worker_resources(worker),
                        "NodeName": worker.get("name")})
        return out

    def shutdown(self) -> None:
        with self._lock:
            self._exported.clear()

    def end_job(self) -> None:
        """The driver's job is over: unpublish the non-detached names its processes took."""
        prefix = f"{job_prefix(self._session.job_id)}names/"
        for key, _ in self._metadata.scan(prefix):
            try:
                self._client.unpublish_dataset(key[len(prefix):])
            except KeyError:
                pass


def _skip_if_undelivered(actor, caller_id: bytes, seq: int, future) -> None:
    if future.status != "finished":
        _when_placed(actor, lambda proxy: proxy.anyray_skip(caller_id, seq).result())


def _when_placed(actor, send) -> None:
    """Call ``send(proxy)`` once the actor exists: at once if it does, else from a thread that waits."""
    if actor.future.status == "finished":
        try:
            send(actor.future.result())
        except Exception:  # noqa: BLE001 - an actor that is gone has no calls to drop
            pass
        return

    def later():
        try:
            send(actor.future.result())
        except Exception:  # noqa: BLE001 - an actor that never started or is gone has no calls to drop
            pass

    threading.Thread(target=later, name="anyray-dask-actor-message", daemon=True).start()


def _worker_resources(worker: dict) -> dict[str, float]:
    out = {"CPU": float(worker.get("nthreads", 0))}
    out.update({k: float(v) for k, v in (worker.get("resources") or {}).items()})
    return out


def _used_resources(dask_scheduler=None) -> dict[str, float]:
    """On the scheduler: custom resources held by running tasks, and threads busy (not seceded)."""
    used: dict[str, float] = {}
    busy = 0
    for ws in dask_scheduler.workers.values():
        for k, v in ws.used_resources.items():
            used[k] = used.get(k, 0) + v
        running = sum(1 for ts in ws.processing  # tasks on a thread, not actors being made nor actor calls
                      if not ts.actor and ts not in ws.long_running and not str(ts.key).startswith(CALL_PREFIX))
        busy += min(running, ws.nthreads)
    used["CPU"] = float(busy)
    return used
