"""Names and small behaviours Ray programs rely on: the exception hierarchy, ``ray.util``, ``ray.types``,
``ray.cloudpickle``, ``get_runtime_context()`` inside tasks and actors, ``wait([])``, and cancelling a
running sync actor call (it is flagged, not interrupted, and its result is dropped)."""

from __future__ import annotations

import importlib
import time

import pytest

import anyray
from anyray import exceptions
from anyray.conformance.helpers import DEADLINE

# Ray 2.x: each name, and the base classes it has there besides RayError.
_RAY_HIERARCHY = {
    "RayTaskError": (), "RayActorError": (), "ActorDiedError": ("RayActorError",),
    "ActorUnavailableError": ("RayActorError",), "ActorUnschedulableError": (), "TaskUnschedulableError": (),
    "OwnerDiedError": ("ObjectLostError",), "ObjectFetchTimedOutError": ("ObjectLostError",),
    "ObjectLostError": (), "OutOfMemoryError": (), "RaySystemError": (), "RuntimeEnvSetupError": (),
    "ObjectRefStreamEndOfStreamError": (), "WorkerCrashedError": (), "TaskCancelledError": (),
    "GetTimeoutError": (), "ObjectStoreFullError": (), "NodeDiedError": (),
    "ObjectReconstructionFailedError": ("ObjectLostError",),
}


@pytest.mark.parametrize("name", sorted(_RAY_HIERARCHY))
def test_exception_names_have_rays_hierarchy(name):
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.RayError)
    for base in _RAY_HIERARCHY[name]:
        assert issubclass(cls, getattr(exceptions, base)), f"{name} should subclass {base}"


def test_an_unavailable_actor_is_no_dead_actor():
    assert not issubclass(exceptions.ActorUnavailableError, exceptions.ActorDiedError)
    assert not issubclass(exceptions.ActorDiedError, exceptions.ActorUnavailableError)
    assert issubclass(exceptions.GetTimeoutError, TimeoutError)


@pytest.mark.parametrize("module", ["anyray.util", "anyray.types", "anyray.cloudpickle", "anyray.actor"])
def test_modules_ray_programs_import(module):
    importlib.import_module(module)


def test_ray_cloudpickle_round_trips_a_lambda():
    import anyray.cloudpickle as cloudpickle

    offset = 7
    assert cloudpickle.loads(cloudpickle.dumps(lambda x: x + offset))(1) == 8


def test_ray_types_object_ref_is_the_ref_type(anyray_session):
    from anyray.types import ObjectRef

    assert isinstance(anyray.put(1), ObjectRef)


def test_util_lists_named_actors_and_the_node_ip(anyray_session):
    from anyray.util import get_node_ip_address, list_named_actors

    actor = _Probe.options(name="util-listed").remote()
    anyray.get(actor.task_name.remote())
    assert "util-listed" in list_named_actors()
    assert {"name": "util-listed", "namespace": anyray.get_runtime_context().namespace} \
        in list_named_actors(all_namespaces=True)
    ip = get_node_ip_address()
    assert isinstance(ip, str) and ip.count(".") == 3
    ips = {node["NodeManagerAddress"] for node in anyray.nodes()}
    assert anyray.get(_node_ip.remote()) in ips
    anyray.kill(actor)


@anyray.remote
def _node_ip():
    from anyray.util import get_node_ip_address

    return get_node_ip_address()


def test_wait_on_no_refs_returns_two_empty_lists(anyray_session):
    assert anyray.wait([]) == ([], [])
    assert anyray.wait([], num_returns=3, timeout=0) == ([], [])


def test_get_if_exists_without_a_name_is_a_value_error(anyray_session):
    with pytest.raises(ValueError, match="name"):
        _Probe.options(get_if_exists=True).remote()


# -- get_runtime_context() ------------------------------------------------------------------


@anyray.remote
def _task_context():
    ctx = anyray.get_runtime_context()
    return {"task_name": ctx.get_task_name(), "task_id": ctx.get_task_id(), "job_id": ctx.get_job_id(),
            "node_id": ctx.get_node_id(), "actor_id": ctx.get_actor_id(), "actor_name": ctx.get_actor_name(),
            "worker_id": ctx.get_worker_id(), "namespace": ctx.namespace, "canceled": ctx.is_canceled()}


@anyray.remote
class _Probe:
    def task_name(self):
        return anyray.get_runtime_context().get_task_name()

    def describe(self):
        ctx = anyray.get_runtime_context()
        return {"task_name": ctx.get_task_name(), "actor_name": ctx.get_actor_name(),
                "actor_id": ctx.get_actor_id(), "task_id": ctx.get_task_id(), "canceled": ctx.is_canceled()}

    def myself(self):
        return anyray.get_runtime_context().current_actor

    def echo(self, value):
        return value

    def spin_until_cancelled(self, timeout: float = DEADLINE):
        ctx = anyray.get_runtime_context()
        deadline = time.monotonic() + timeout
        while not ctx.is_canceled():
            if time.monotonic() > deadline:
                return "never cancelled"
            time.sleep(0.01)
        return "saw the cancel"


def _is_hex(value, length=None) -> bool:
    if not isinstance(value, str) or not value:
        return False
    int(value, 16)
    return length is None or len(value) == length


def test_context_in_the_driver(anyray_session):
    ctx = anyray.get_runtime_context()
    assert _is_hex(ctx.get_job_id())
    assert isinstance(ctx.get_node_id(), str) and ctx.get_node_id()
    assert _is_hex(ctx.get_worker_id())
    assert ctx.get_task_id() is None
    assert ctx.get_actor_id() is None
    assert ctx.get_actor_name() is None
    assert isinstance(ctx.namespace, str) and ctx.namespace
    with pytest.raises(RuntimeError):
        _ = ctx.current_actor


def test_context_in_a_task_names_the_task_and_its_job(anyray_session):
    driver = anyray.get_runtime_context()
    first, second = anyray.get([_task_context.remote(), _task_context.options(name="renamed").remote()])
    assert first["task_name"] == "_task_context"
    assert second["task_name"] == "renamed"
    assert first["job_id"] == second["job_id"] == driver.get_job_id()
    assert first["namespace"] == driver.namespace
    assert _is_hex(first["task_id"]) and _is_hex(second["task_id"])
    assert first["task_id"] != second["task_id"]
    assert first["node_id"] in {node["NodeID"] for node in anyray.nodes()}
    assert first["actor_id"] is None and first["actor_name"] is None
    assert _is_hex(first["worker_id"])
    assert first["canceled"] is False


def test_context_in_an_actor_names_the_actor_and_the_method(anyray_session):
    named = _Probe.options(name="context-probe").remote()
    unnamed = _Probe.remote()
    a, b = anyray.get([named.describe.remote(), unnamed.describe.remote()])
    assert a["task_name"] == b["task_name"] == "_Probe.describe"
    assert a["actor_name"] == "context-probe"
    assert b["actor_name"] == ""  # Ray: an empty string inside an unnamed actor
    assert _is_hex(a["actor_id"]) and _is_hex(b["actor_id"]) and a["actor_id"] != b["actor_id"]
    assert a["task_id"] != a["actor_id"]
    assert a["canceled"] is False
    anyray.kill(named)


def test_current_actor_is_a_usable_handle_to_the_actor_itself(anyray_session):
    actor = _Probe.remote()
    actor_id = anyray.get(actor.describe.remote())["actor_id"]
    myself = anyray.get(actor.myself.remote())
    assert anyray.get(myself.echo.remote("through my own handle")) == "through my own handle"
    assert anyray.get(myself.describe.remote())["actor_id"] == actor_id


@pytest.mark.parametrize("max_concurrency", [1, 2])
def test_cancel_flags_a_running_sync_actor_call_and_drops_its_result(anyray_session, max_concurrency):
    actor = _Probe.options(max_concurrency=max_concurrency).remote()
    anyray.get(actor.echo.remote(None))  # the actor is up
    ref = actor.spin_until_cancelled.remote()
    ready, _ = anyray.wait([ref], timeout=0.5)
    assert not ready  # it spins
    anyray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    assert anyray.get(actor.echo.remote("alive"), timeout=DEADLINE) == "alive"  # the actor lives on
    assert anyray.get(actor.describe.remote())["canceled"] is False  # the next call starts unflagged


def test_is_canceled_is_for_workers_only(anyray_session):
    with pytest.raises(RuntimeError):
        anyray.get_runtime_context().is_canceled()
