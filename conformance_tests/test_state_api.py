"""The state API, ``ray.util.state``: list_actors, list_tasks, list_objects, list_nodes, list_jobs,
list_placement_groups, list_workers, get_actor, get_task, summarize_tasks, summarize_actors.

Proves, as Ray 2.x behaves: the rows are Ray's types with Ray's field names, readable as attributes and
as dict items; ``detail=True`` fills the detail columns (``num_restarts``...), which are None otherwise;
an actor is listed ALIVE with its class, name, pid and node, and DEAD once killed; a task is listed
RUNNING while it runs, then FINISHED, or FAILED with Ray's error type; an actor call under its method's
name; an object the driver put, or a task returned to it, is listed with its size; every node is listed
ALIVE with its resources and one of them is the head; the job of the driver is listed RUNNING; the driver
and the process that runs a task are listed as workers; a placement group is listed CREATED, then REMOVED;
summaries count tasks by name and actors by class, each by state.
Filters are Ray's: ``(key, "=" or "!=", value)``, strings compared without case, a string compared with
an int column converted, conflicting "=" filters giving nothing; ``limit`` caps the rows.

Bad input: a filter on a column that cannot be filtered raises ``RayStateApiException`` naming the
columns that can (Ray raises it from its API server), a predicate other than "=" / "!=" a ``ValueError``
(as Ray), a limit that is not a positive int a ``ValueError``/``TypeError`` (Ray does not check it).
"""

from __future__ import annotations

import os
import uuid

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, hold_until_set, wait_until
from anyray.util.state import (
    ActorState,
    NodeState,
    RayStateApiException,
    TaskState,
    get_actor,
    get_task,
    list_actors,
    list_jobs,
    list_nodes,
    list_objects,
    list_placement_groups,
    list_tasks,
    list_workers,
    summarize_actors,
    summarize_tasks,
)

pytestmark = pytest.mark.usefixtures("anyray_session")


@anyray.remote
class Listed:
    def whoami(self):
        ctx = anyray.get_runtime_context()
        return ctx.get_actor_id(), os.getpid()

    def whose_call(self):
        return anyray.get_runtime_context().get_task_id()


@anyray.remote
class SummarizedTwice:
    def ready(self):
        return True


@anyray.remote
def state_held_task(signal):
    hold_until_set(signal)
    return anyray.get_runtime_context().get_task_id()


@anyray.remote
def state_failing_task():
    raise ValueError("this task fails on purpose")


@anyray.remote
def state_summed_task(x):
    return x


@anyray.remote
def state_pid_task():
    return os.getpid()


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _actor_named(name: str) -> tuple:
    actor = Listed.options(name=name).remote()
    actor_id, pid = anyray.get(actor.whoami.remote(), timeout=DEADLINE)
    return actor, actor_id, pid


# -- actors ---------------------------------------------------------------------------------------


def test_list_actors_shows_a_live_actor_with_rays_fields():
    name = _unique("listed")
    _actor, actor_id, pid = _actor_named(name)
    rows = list_actors(filters=[("name", "=", name)])
    assert len(rows) == 1
    row = rows[0]
    assert isinstance(row, ActorState)
    assert (row.actor_id, row.class_name, row.state, row.name, row.pid) == (actor_id, "Listed", "ALIVE", name, pid)
    assert row["state"] == row.get("state") == "ALIVE"  # Ray's rows read like dicts too
    assert row.node_id in {node.node_id for node in list_nodes()}
    assert row.num_restarts is None  # a detail column: filled with detail=True only
    detailed = list_actors(filters=[("name", "=", name)], detail=True)[0]
    assert detailed.num_restarts == 0 and detailed.is_detached is False


def test_get_actor_gives_one_actor_with_its_details_or_none():
    _actor, actor_id, _pid = _actor_named(_unique("got"))
    row = get_actor(actor_id)
    assert isinstance(row, ActorState)
    assert row.actor_id == actor_id and row.state == "ALIVE" and row.num_restarts == 0
    assert get_actor("f" * len(actor_id)) is None


def test_a_killed_actor_is_listed_dead():
    actor, actor_id, _pid = _actor_named(_unique("killed"))
    anyray.kill(actor)
    wait_until(lambda: [r.state for r in list_actors(filters=[("actor_id", "=", actor_id)])] == ["DEAD"],
               what="the killed actor listed DEAD")


def test_summarize_actors_counts_by_class_and_state():
    actors = [SummarizedTwice.remote() for _ in range(2)]
    anyray.get([a.ready.remote() for a in actors], timeout=DEADLINE)
    summary = summarize_actors()["cluster"]
    assert summary["summary"]["SummarizedTwice"] == {"class_name": "SummarizedTwice", "state_counts": {"ALIVE": 2}}
    assert summary["total_actors"] >= 2 and summary["summary_by"] == "class"


# -- tasks ----------------------------------------------------------------------------------------


def _task_states(task_name: str) -> list[str]:
    return [row.state for row in list_tasks(filters=[("name", "=", task_name)], limit=10_000)]


def test_a_task_is_listed_running_then_finished(signal):
    ref = state_held_task.remote(signal)
    wait_until(lambda: "RUNNING" in _task_states("state_held_task"), what="the task listed RUNNING")
    signal.send.remote()
    task_id = anyray.get(ref, timeout=DEADLINE)
    wait_until(lambda: getattr(get_task(task_id), "state", None) == "FINISHED", what="the task listed FINISHED")
    row = get_task(task_id)
    assert isinstance(row, TaskState)
    assert (row.name, row.func_or_class_name, row.type) == ("state_held_task", "state_held_task", "NORMAL_TASK")


def test_a_failed_task_is_listed_failed_with_rays_error_type():
    with pytest.raises(ValueError):
        anyray.get(state_failing_task.remote(), timeout=DEADLINE)
    wait_until(lambda: "FAILED" in _task_states("state_failing_task"), what="the task listed FAILED")
    row = list_tasks(filters=[("name", "=", "state_failing_task")], detail=True)[0]
    assert row.error_type == "TASK_EXECUTION_EXCEPTION"
    assert "this task fails on purpose" in row.error_message


def test_an_actor_call_is_listed_under_its_method_name():
    actor, _actor_id, _pid = _actor_named(_unique("called"))
    task_id = anyray.get(actor.whose_call.remote(), timeout=DEADLINE)
    wait_until(lambda: getattr(get_task(task_id), "state", None) == "FINISHED", what="the actor call listed FINISHED")
    row = get_task(task_id)
    assert (row.name, row.func_or_class_name, row.type) == ("Listed.whose_call", "Listed.whose_call", "ACTOR_TASK")


def test_summarize_tasks_counts_by_name_and_state():
    anyray.get([state_summed_task.remote(i) for i in range(3)], timeout=DEADLINE)

    def counted():
        return summarize_tasks()["cluster"]["summary"].get("state_summed_task", {}).get("state_counts")

    wait_until(lambda: counted() == {"FINISHED": 3}, what="three finished tasks counted")
    summary = summarize_tasks()["cluster"]
    assert summary["summary"]["state_summed_task"]["type"] == "NORMAL_TASK"
    assert summary["total_tasks"] >= 3 and summary["summary_by"] == "func_name"


# -- objects, nodes, jobs, workers, placement groups ----------------------------------------------------


def test_an_object_the_driver_put_is_listed_with_its_size():
    ref = anyray.put(b"x" * 2_000_000)

    def sizes():
        return [row.object_size for row in list_objects(filters=[("object_id", "=", ref.hex())])]

    wait_until(lambda: len(sizes()) == 1, what="the object listed")
    assert sizes()[0] >= 2_000_000


def test_an_object_a_task_returned_is_listed_while_the_driver_holds_it():
    ref = state_summed_task.remote(b"y" * 200_000)
    anyray.wait([ref], timeout=DEADLINE)

    def listed():
        return [row.object_size for row in list_objects(filters=[("object_id", "=", ref.hex())])]

    wait_until(lambda: len(listed()) == 1, what="the returned object listed")
    assert listed()[0] >= 200_000


def test_list_nodes_shows_every_node_alive_and_one_head():
    rows = list_nodes()
    assert all(isinstance(row, NodeState) for row in rows)
    assert {row.node_id for row in rows} == {n["NodeID"] for n in anyray.nodes() if n["Alive"]}
    assert {row.state for row in rows} == {"ALIVE"}
    assert sum(row.is_head_node for row in rows) == 1
    assert sum(row.resources_total.get("CPU", 0) for row in rows) == anyray.cluster_resources().get("CPU", 0)


def test_list_jobs_shows_the_drivers_job_running():
    job_id = anyray.get_runtime_context().get_job_id()
    rows = [row for row in list_jobs() if row.job_id == job_id]
    assert [(row.status, row.type) for row in rows] == [("RUNNING", "DRIVER")]


def test_list_workers_shows_the_driver_and_the_process_of_a_task():
    task_pid = anyray.get(state_pid_task.remote(), timeout=DEADLINE)
    rows = list_workers(limit=10_000)
    assert os.getpid() in {row.pid for row in rows if row.worker_type == "DRIVER"}
    assert task_pid in {row.pid for row in rows if row.is_alive}


def test_list_placement_groups_shows_a_created_group_then_removed():
    from anyray.util.placement_group import placement_group, remove_placement_group

    group = placement_group([{"CPU": 1}])
    anyray.get(group.ready(), timeout=DEADLINE)
    group_id = group.id.hex()
    rows = list_placement_groups(filters=[("placement_group_id", "=", group_id)])
    assert [row.state for row in rows] == ["CREATED"]
    remove_placement_group(group)
    wait_until(lambda: [r.state for r in list_placement_groups(filters=[("placement_group_id", "=", group_id)])]
               == ["REMOVED"], what="the group listed REMOVED")


# -- filters and limit --------------------------------------------------------------------------------


def test_filters_and_limit_select_rows_as_ray_does():
    first, second = _unique("first"), _unique("second")
    _a, first_id, first_pid = _actor_named(first)
    _b, second_id, _ = _actor_named(second)
    assert [r.actor_id for r in list_actors(filters=[("name", "=", first.upper())])] == [first_id]  # any case
    others = {r.actor_id for r in list_actors(filters=[("name", "!=", first)], limit=10_000)}
    assert second_id in others and first_id not in others
    by_pid = list_actors(filters=[("name", "=", first), ("pid", "=", str(first_pid))])  # "123" read as 123
    assert [r.actor_id for r in by_pid] == [first_id]
    assert [r.actor_id for r in list_actors(filters=[("name", "=", first), ("state", "=", "alive")])] == [first_id]
    assert list_actors(filters=[("name", "=", first), ("name", "=", second)]) == []  # conflicting: nothing
    assert len(list_actors(limit=1)) == 1


# -- bad input -----------------------------------------------------------------------------------------


def test_a_filter_on_a_column_that_cannot_be_filtered_raises_rays_error():
    with pytest.raises(RayStateApiException, match="is not supported.*Supported filter columns"):
        list_actors(filters=[("no_such_column", "=", "x")])
    with pytest.raises(RayStateApiException, match="num_restarts"):
        list_actors(filters=[("num_restarts", "=", 0)])  # a column of the rows, but not a filterable one


def test_an_unknown_predicate_raises_value_error():
    with pytest.raises(ValueError, match="Unsupported filter predicate >"):
        list_nodes(filters=[("state", ">", "ALIVE")])


@pytest.mark.parametrize("limit, error", [(0, ValueError), (-1, ValueError), ("10", TypeError)])
def test_a_bad_limit_is_refused(limit, error):
    with pytest.raises(error, match="limit"):
        list_nodes(limit=limit)
