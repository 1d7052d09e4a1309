"""The Scheduler port on Ray: specs become Ray tasks and actors that run the core's executor.

- A task spec is one call of the Ray remote function made for its anyray
  function (:func:`~anyray_ray.worker.task_runner`; made once per function
  and option set in this process, exported by Ray once per job). The pickled
  arguments travel as a :data:`~anyray_ray.transport.Payload`; the
  top-level dependencies travel as Ray ObjectRef arguments, so Ray starts the
  task only once they exist and hands their values to the worker. Each of
  ``spec.returns`` gets the Ray ref Ray returned as its ``native``.
- An actor spec is a Ray actor of the host class made for its anyray class
  (:func:`~anyray_ray.worker.actor_host`); a method call is one call of the
  host's ``anyray_call``. Actor options map one to one on Ray's; a
  ``scheduling_strategy`` becomes Ray's own (placement groups, node affinity).
- Placement, resource accounting, CPU release while blocked in ``get``,
  retries of crashed workers (``max_retries``) and actor restarts
  (``max_restarts``, ``max_task_retries``) are Ray's.

Ray's failures are translated into ``anyray.exceptions`` here and in the
object store, at the boundary.
"""

from __future__ import annotations

import json
import threading
import time
import warnings

import ray
from ray import exceptions as rx

from anyray.backend_kit import (
    ActorSpec,
    ActorTaskSpec,
    Feasibility,
    RemoteFailure,
    Scheduler,
    TaskSpec,
    engine_text,
    serialize_failure,
)
from anyray.exceptions import ActorDiedError, ActorNameTaken

from .actors import ActorDirectory, RayActor, lookup, register
from .errors import translate
from .generators import FailedStream, RayObjectRefGenerator
from .placement_groups import RayPlacementGroups, ray_strategy
from .state import RayState, note_task
from .state_sources import close as close_state_channels
from .transport import bind_returns, pack
from .worker import Session, actor_host, export, method_call, returns_mode, stream_runner, task_call, task_runner


def _resource_options(options: dict) -> dict:
    out = {"num_cpus": options["num_cpus"], "num_gpus": options["num_gpus"]}
    if options["memory"]:
        out["memory"] = options["memory"]
    if options["resources"]:
        out["resources"] = dict(options["resources"])
    if options["scheduling_strategy"]:
        out["scheduling_strategy"] = ray_strategy(options["scheduling_strategy"])
    if options.get("accelerator_type"):
        out["accelerator_type"] = options["accelerator_type"]
    if options.get("runtime_env"):
        out["runtime_env"] = options["runtime_env"]  # as given: Ray merges it with the job's and sets it up
    return out


def _env_key(runtime_env) -> str | None:
    """A variant per runtime_env (Ray's options hold it): its fields as text."""
    return None if not runtime_env else json.dumps(runtime_env, sort_keys=True, default=repr)


class RayScheduler(RayPlacementGroups, RayState, Scheduler):
    """Submission methods return once Ray has accepted the work; safe from any thread.

    Placement groups are Ray's own (:class:`~anyray_ray.placement_groups.RayPlacementGroups`)."""

    # Capability flags all False: Ray tracks actor handles itself and releases a task's CPUs while it
    # waits in ray.get/ray.wait, and no thread of the driver runs Ray's tasks.

    def __init__(self, session: Session, metadata):
        self._session = session
        self._directory = ActorDirectory(metadata)
        self._lock = threading.Lock()
        self._functions: dict[bytes, object] = {}   # function_id -> ray.remote(runner)
        self._variants: dict[tuple, object] = {}    # (function_id, options...) -> runner with Ray options
        self._classes: dict[bytes, object] = {}     # class function_id -> ray.remote(host class)
        self._feasibility = Feasibility(
            lambda: [n["Resources"] for n in ray.nodes() if n.get("Alive")],
            engine_text("node", "the Ray cluster"), refresh=2.0)

    # -- tasks ------------------------------------------------------------
    def _task_function(self, spec: TaskSpec):
        o = spec.options
        mode = returns_mode(spec)
        backpressure = o.get("_generator_backpressure_num_objects")
        key = (spec.function.function_id, mode, o["num_cpus"], o["num_gpus"], o["memory"],
               tuple(sorted(o["resources"].items())), o["max_retries"], o["max_calls"],
               o["scheduling_strategy"], o.get("accelerator_type"), spec.name, backpressure,
               _env_key(o.get("runtime_env")))
        fn = self._variants.get(key)
        if fn is None:
            with self._lock:
                streams = isinstance(mode, str)  # a generator task: its Ray task is a generator too
                base_key = (spec.function.function_id, streams)
                base = self._functions.get(base_key)
                if base is None:
                    exported = export(spec.function.target, f"the remote function {spec.function.name}")
                    runner = stream_runner if streams else task_runner
                    base = ray.remote(runner(exported, spec.function.name, self._session))
                    self._functions[base_key] = base
                options = {**_resource_options(o), "num_returns": mode, "name": spec.name,
                           "max_retries": o["max_retries"], "retry_exceptions": False}
                if o["max_calls"]:
                    options["max_calls"] = o["max_calls"]
                if streams and backpressure is not None:
                    options["_generator_backpressure_num_objects"] = backpressure
                with warnings.catch_warnings():  # Ray deprecates "dynamic"; anyray keeps it as Ray 2.x has it
                    warnings.simplefilter("ignore", DeprecationWarning)
                    fn = self._variants[key] = base.options(**options)
        return fn

    def submit_task(self, spec: TaskSpec) -> RayObjectRefGenerator | None:
        if spec.resources:
            self._feasibility.check(spec.function.function_id, spec.name, spec.resources)
        try:
            out = self._task_function(spec).remote(task_call(spec), *[d.native for d in spec.deps])
        except rx.RayError as exc:
            raise translate(exc, spec.name) from exc
        return _bind(spec, out)

    # -- actors -----------------------------------------------------------
    def _host_class(self, spec: ActorSpec):
        cls = self._classes.get(spec.cls.function_id)
        if cls is None:
            with self._lock:
                cls = self._classes.get(spec.cls.function_id)
                if cls is None:
                    exported = export(spec.cls.target, f"the actor class {spec.cls.name}")
                    groups = spec.options.get("concurrency_groups")  # Ray takes them in @remote only
                    host = actor_host(exported, spec.cls.name, spec.is_async)
                    cls = ray.remote(concurrency_groups=groups)(host) if groups else ray.remote(host)
                    self._classes[spec.cls.function_id] = cls
        return cls

    def create_actor(self, spec: ActorSpec) -> RayActor:
        o = spec.options
        name = o["name"]
        options = {**_resource_options(o), "max_restarts": o["max_restarts"], "max_concurrency": spec.max_concurrency,
                   "max_task_retries": o["max_task_retries"], "namespace": spec.namespace}
        if name is not None:
            options["name"] = name
            options["get_if_exists"] = o["get_if_exists"]
        if o["lifetime"] is not None:
            options["lifetime"] = o["lifetime"]
        if o["max_pending_calls"] != -1:
            options["max_pending_calls"] = o["max_pending_calls"]
        if spec.resources:
            self._feasibility.check(spec.actor_id, spec.cls.name, spec.resources)
        try:
            handle = self._host_class(spec).options(**options).remote(
                self._session, spec.actor_id, spec.cls.name, spec.resources, o["max_task_retries"], pack(spec.args),
                [d.binary() for d in spec.deps], *[d.native for d in spec.deps])
        except ValueError as exc:
            if name is not None and "already" in str(exc):
                raise ValueError(f"An actor named {name!r} already exists in namespace {spec.namespace!r}. "
                                 f"Pick another name, or pass get_if_exists=True to reuse it.") from exc
            raise
        except rx.RayError as exc:
            raise translate(exc, spec.cls.name) from exc
        if name is not None:
            self._directory.record(handle, spec.actor_id, spec.cls.name, spec.method_options, o["get_if_exists"])
            if o["get_if_exists"]:  # Ray may have returned an actor another caller made: its anyray handle
                winner = self._directory.handle_of(handle)
                if winner is not None and winner._actor_id != spec.actor_id:
                    raise ActorNameTaken(winner)
        return register(spec.actor_id, handle)

    def submit_actor_task(self, spec: ActorTaskSpec) -> RayObjectRefGenerator | None:
        actor = lookup(spec.actor_id)
        if actor is None:
            self._fail(spec.returns, ActorDiedError(
                f"{spec.name}: no handle of actor {spec.actor_id.hex()} is alive in this process."))
            return FailedStream(spec.returns[0]) if spec.options.get("num_returns") == "streaming" else None
        mode = returns_mode(spec)
        if isinstance(mode, str):  # a generator method: the host's generator method streams its values
            options = {"num_returns": mode}
            if spec.options.get("concurrency_group") is not None:
                options["concurrency_group"] = spec.options["concurrency_group"]
            backpressure = spec.options.get("_generator_backpressure_num_objects")
            if backpressure is not None:
                options["_generator_backpressure_num_objects"] = backpressure
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                method = actor.handle.anyray_stream.options(**options)
        else:
            method = actor.handle.anyray_call
            options = {} if mode == 1 else {"num_returns": mode}
            if spec.options.get("concurrency_group") is not None:
                options["concurrency_group"] = spec.options["concurrency_group"]
            if options:
                method = method.options(**options)
        try:
            out = method.remote(method_call(spec), *[d.native for d in spec.deps])
        except rx.RayError as exc:
            raise translate(exc, spec.name) from exc
        return _bind(spec, out)

    def _fail(self, refs, error: BaseException) -> None:
        for ref in refs:
            ref.native = ray.put(pack(serialize_failure(RemoteFailure(error))))

    def get_named_actor(self, name: str, namespace: str):
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError:
            return None
        # The creator records the anyray description just after Ray registers the name.
        for delay in (0, 0.01, 0.05, 0.1):
            time.sleep(delay)
            found = self._directory.handle_of(handle)
            if found is not None:
                return found
        return None

    def list_named_actors(self, namespace: str | None) -> list[tuple[str, str]]:
        found = ray.util.list_named_actors(all_namespaces=True)
        return sorted((a["namespace"], a["name"]) for a in found if namespace is None or a["namespace"] == namespace)

    def kill_actor(self, actor_id: bytes, no_restart: bool) -> None:
        actor = lookup(actor_id)
        if actor is None:
            return
        restarts = None if no_restart else _restarts(actor.handle)
        try:
            ray.kill(actor.handle, no_restart=no_restart)
        except rx.RayError as exc:
            raise translate(exc, "kill()") from exc
        if no_restart:
            self._directory.forget(actor.handle)
        elif restarts is not None:
            _await_restart(actor.handle, restarts)

    # -- cancel, blocking -------------------------------------------------
    def cancel(self, ref, force: bool, recursive: bool) -> None:
        native = ref.native
        if native is None:
            return
        try:
            ray.cancel(native, force=force, recursive=recursive)
        except ValueError:
            if not force:
                return  # not a task Ray can cancel (a put object, say): nothing to do, as in Ray
            # Ray cannot force-cancel an actor call; interrupting it is the most it can do.
            self.cancel(ref, False, recursive)
        except rx.RayError as exc:
            raise translate(exc, "cancel()") from exc

    # -- cluster state ----------------------------------------------------
    def cluster_resources(self) -> dict[str, float]:
        return dict(ray.cluster_resources())

    def available_resources(self) -> dict[str, float]:
        # Ray leaves out a resource that is fully in use; anyray reports it as 0.
        free = dict.fromkeys(ray.cluster_resources(), 0.0)
        free.update(ray.available_resources())
        return free

    def nodes(self) -> list[dict]:
        return ray.nodes()

    def shutdown(self) -> None:
        close_state_channels()
        with self._lock:
            self._functions.clear()
            self._variants.clear()
            self._classes.clear()


def _bind(spec, out):
    """Give the spec's refs their Ray refs; for a streaming call, the ObjectRefGenerator the caller gets."""
    if spec.options.get("num_returns") == "streaming":
        spec.returns[0].native = out.completed()  # the generator task's own ref: completed(), cancel()
        note_task(spec, isinstance(spec, ActorTaskSpec))
        return RayObjectRefGenerator(out, spec.returns[0], spec.name)
    bind_returns(spec.returns, out)
    note_task(spec, isinstance(spec, ActorTaskSpec))
    return None


def _actor_state(handle) -> dict:
    from ray._private import state  # Ray's GCS actor table; no public API reads it without the dashboard

    return state.actors(actor_id=handle._actor_id.hex()) or {}


def _restarts(handle) -> int | None:
    try:
        return _actor_state(handle).get("NumRestarts")
    except Exception:  # noqa: BLE001 - only a courtesy wait depends on it
        return None


def _await_restart(handle, before: int, timeout: float = 30.0) -> None:
    """Return once the killed incarnation is gone: Ray's kill lands asynchronously, and the port
    promises that calls made after ``kill`` do not reach the old incarnation."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _actor_state(handle)
        if info.get("State") == "DEAD" or info.get("NumRestarts", before) > before:
            return
        time.sleep(0.02)
