"""The node's actors part (``adapters/node/actors.py``) with no processes: real store, pool, queues and
metadata store, and actor processes that only record the messages sent to them (``tests/node_parts.py``)."""

from __future__ import annotations

import pytest
from node_parts import NodeParts

from anyray import ids
from anyray.adapters.node import messages as m
from anyray.exceptions import ActorDiedError
from anyray.object_ref import ObjectRef
from anyray.serialization import SerializedObject
from anyray.specs import ActorSpec, ActorTaskSpec, FunctionDescriptor

CLS = FunctionDescriptor(b"c" * 16, "Counter", object)


@pytest.fixture
def node():
    parts = NodeParts({"CPU": 1.0})
    yield parts
    parts.close()


def _actor(name=None, lifetime=None, resources=None, max_restarts=0, max_task_retries=0) -> ActorSpec:
    return ActorSpec(actor_id=ids.new_id(), cls=CLS, args=SerializedObject(b"args"), deps=[],
                     resources={"CPU": 1.0} if resources is None else resources,
                     options={"name": name, "get_if_exists": False, "lifetime": lifetime,
                              "max_restarts": max_restarts, "max_task_retries": max_task_retries,
                              "max_concurrency": None},
                     namespace="ns", is_async=False)


def _call(actor: ActorSpec, seq: int, **options) -> ActorTaskSpec:
    return ActorTaskSpec(task_id=ids.new_id(), actor_id=actor.actor_id, method_name="incr",
                         args=SerializedObject(b"args"), deps=[], returns=[ObjectRef(ids.new_id())],
                         caller_id=b"caller", seq=seq, options=options, name=f"Counter.incr#{seq}")


BODY_OF_KIND = {m.ACTOR_CREATE: m.ActorCreate, m.ACTOR_CALL: m.ActorCall}


def _actor_messages(node, kind: str) -> list:
    """``(worker, body)`` of each ``ACTOR`` message of ``kind`` sent, the body as its type."""
    body_type = BODY_OF_KIND.get(kind)
    return [(worker, op.body if body_type is None else body_type._make(op.body))
            for worker, op in node.workers.of(m.ACTOR) if op.kind == kind]


def test_calls_made_before_the_actor_has_its_resources_go_out_in_order_once_it_starts(node):
    blocker = _actor()
    node.actors.create_actor(blocker)  # takes the one CPU
    actor = _actor()
    node.actors.create_actor(actor)
    calls = [_call(actor, seq) for seq in range(3)]
    for call in calls:
        node.actors.submit_actor_task(call)
    assert len(_actor_messages(node, "create")) == 1
    node.actors.kill_actor(blocker.actor_id, no_restart=True)  # its CPU goes to the waiting actor
    [(worker, created)] = _actor_messages(node, "create")[1:]
    assert created.actor_id == actor.actor_id
    assert [call.task_id for w, call in _actor_messages(node, "call") if w is worker] == [c.task_id for c in calls]


def test_a_restart_sends_again_in_order_only_the_calls_max_task_retries_allows(node):
    actor = _actor(max_restarts=1)
    node.actors.create_actor(actor)
    retried, once = _call(actor, 1, max_task_retries=1), _call(actor, 0)
    node.actors.submit_actor_task(once)
    node.actors.submit_actor_task(retried)
    [(first, _)] = _actor_messages(node, "create")
    first.handle.died(-9)
    node.actors.actor_exited(first.actor, first)
    failure = node.value(once.returns[0])
    assert isinstance(failure.error, ActorDiedError)
    assert "died: its process killed by SIGKILL while running Counter.incr#0; it is restarting" in str(failure.error)
    [(second, created)] = _actor_messages(node, "create")[1:]
    assert created.restarts == 1
    assert [call.task_id for w, call in _actor_messages(node, "call") if w is second] == [retried.task_id]


def test_kill_without_no_restart_restarts_the_actor(node):
    actor = _actor(max_restarts=1)
    node.actors.create_actor(actor)
    [(first, _)] = _actor_messages(node, "create")
    node.actors.kill_actor(actor.actor_id, no_restart=False)
    assert first.handle.killed
    assert len(_actor_messages(node, "create")) == 2
    assert node.actors.get_named_actor("unnamed", "ns") is None


def test_the_last_handle_gone_ends_the_actor_unless_it_is_detached(node):
    plain, detached = _actor(), _actor(resources={}, lifetime="detached")
    node.actors.create_actor(plain)
    node.actors.create_actor(detached)
    node.actors.actor_handles_gone(plain.actor_id)
    node.actors.actor_handles_gone(detached.actor_id)
    workers = {created.actor_id: w for w, created in _actor_messages(node, "create")}
    assert [w for w, _ in _actor_messages(node, "terminate")] == [workers[plain.actor_id]]


def test_a_name_is_held_while_its_actor_lives(node):
    actor = _actor(name="counter")
    node.actors.create_actor(actor)
    assert node.actors.get_named_actor("counter", "ns")._actor_id == actor.actor_id
    with pytest.raises(ValueError, match="An actor named 'counter' already exists in namespace 'ns'"):
        node.actors.create_actor(_actor(name="counter"))
    node.actors.kill_actor(actor.actor_id, no_restart=True)
    assert node.actors.get_named_actor("counter", "ns") is None
    assert node.names.actor_id("counter", "ns") is None


def test_a_call_to_an_actor_that_is_not_here_fails(node):
    call = _call(_actor(), 0)
    node.actors.submit_actor_task(call)
    assert "No actor with id" in str(node.value(call.returns[0]).error)
