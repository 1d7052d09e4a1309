"""Resources and cluster state: totals, availability, custom resources, CPUs lent while blocked.

Proves that the resources given to ``init`` (or, for a cluster joined by
address, those of its nodes) are what the cluster reports; that
``available_resources`` goes down while a task holds a CPU and a custom
resource and comes back after; that a task needing a custom resource another task holds does not start
until it is released (shown by the order events are recorded in); that a
task blocked in ``get`` gives its CPU back so nested waits cannot deadlock;
and that ``nodes``, ``get_gpu_ids`` and ``get_runtime_context`` describe the
job, node, task and actor the code runs in.
"""

import os

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Barrier, Recorder, Signal, hold_until_set, recorded, wait_until

pytestmark = pytest.mark.usefixtures("anyray_session")


def test_cluster_resources_show_the_cpus_and_custom_resources(init_kwargs):
    total = anyray.cluster_resources()
    alive = [node["Resources"] for node in anyray.nodes() if node["Alive"]]
    # What init was given, where it was given; else (a cluster joined by address) what its nodes have.
    assert total["CPU"] == init_kwargs.get("num_cpus", sum(node.get("CPU", 0) for node in alive))
    assert total["CPU"] > 0
    for name, amount in init_kwargs.get("resources", {}).items():
        assert total[name] == amount
    for name in ("CPU", "Custom"):
        assert total.get(name, 0) == sum(node.get(name, 0) for node in alive), name


def test_available_resources_go_down_while_held_and_come_back():
    total = anyray.cluster_resources()
    wait_until(lambda: _free("CPU") == total["CPU"] and _free("Custom") == total["Custom"], what="resources idle")
    signal = Signal.remote()

    @anyray.remote(num_cpus=1, resources={"Custom": 1})
    def hold(signal):
        hold_until_set(signal)  # keeps its CPU: a task waiting in get would lend it

    holder = hold.remote(signal)
    try:
        wait_until(lambda: _free("CPU") == total["CPU"] - 1 and _free("Custom") == total["Custom"] - 1,
                   what="a CPU and a Custom held by the running task")
        assert anyray.cluster_resources() == total  # the totals do not move
    finally:
        signal.send.remote()
    anyray.get(holder, timeout=DEADLINE)
    wait_until(lambda: _free("CPU") == total["CPU"] and _free("Custom") == total["Custom"],
               what="the task's CPU and Custom given back")


def _free(name: str) -> float:
    return anyray.available_resources().get(name, 0.0)


def test_a_running_task_holds_its_custom_resource():
    signal = Signal.remote()
    recorder = Recorder.remote()

    @anyray.remote(resources={"Custom": 2})
    def hold(signal, recorder):
        anyray.get(recorder.record.remote("holding"))
        return anyray.get(signal.wait.remote())

    holder = hold.remote(signal, recorder)
    try:
        recorded(recorder, "holding")
        wait_until(lambda: anyray.available_resources().get("Custom", 0) == 0, what="Custom taken")
    finally:
        signal.send.remote()
    anyray.get(holder, timeout=DEADLINE)
    wait_until(lambda: anyray.available_resources().get("Custom", 0) == 2, what="Custom given back")


def test_a_task_waits_while_another_holds_the_custom_resource():
    signal = Signal.remote()
    recorder = Recorder.remote()

    @anyray.remote(resources={"Custom": 2})
    def hold(signal, recorder):
        anyray.get(recorder.record.remote("holder started"))
        anyray.get(signal.wait.remote())
        anyray.get(recorder.record.remote("holder finished"))

    @anyray.remote(resources={"Custom": 2})
    def follow(recorder):
        anyray.get(recorder.record.remote("follower started"))
        return "followed"

    holder = hold.remote(signal, recorder)
    try:
        recorded(recorder, "holder started")
        follower = follow.remote(recorder)
        ready, _ = anyray.wait([follower], timeout=0.5)
        assert ready == []
    finally:
        signal.send.remote()
    assert anyray.get(follower, timeout=DEADLINE) == "followed"
    anyray.get(holder, timeout=DEADLINE)
    assert anyray.get(recorder.entries.remote()) == ["holder started", "holder finished", "follower started"]


def test_a_task_blocked_in_get_gives_its_cpu_back():
    cpus = int(anyray.cluster_resources()["CPU"])
    barrier = Barrier.remote(cpus)

    @anyray.remote
    def child(i):
        return i * 10

    @anyray.remote(num_cpus=1)
    def parent(barrier, i):
        anyray.get(barrier.arrive.remote())  # every CPU is now held by a parent
        return anyray.get(child.remote(i))

    refs = [parent.remote(barrier, i) for i in range(cpus)]
    assert anyray.get(refs, timeout=60) == [i * 10 for i in range(cpus)]


def test_a_task_blocked_in_wait_gives_its_cpu_back():
    cpus = int(anyray.cluster_resources()["CPU"])
    barrier = Barrier.remote(cpus)

    @anyray.remote
    def child(i):
        return i

    @anyray.remote(num_cpus=1)
    def parent(barrier, i):
        anyray.get(barrier.arrive.remote())
        ready, _ = anyray.wait([child.remote(i)], timeout=DEADLINE)
        return anyray.get(ready)

    refs = [parent.remote(barrier, i) for i in range(cpus)]
    assert anyray.get(refs, timeout=60) == [[i] for i in range(cpus)]


def test_get_gpu_ids_is_empty_without_gpus():
    @anyray.remote(num_gpus=0)
    def gpu_ids():
        return anyray.get_gpu_ids()

    assert anyray.get(gpu_ids.remote()) == []
    if anyray.cluster_resources().get("GPU", 0) == 0:
        assert anyray.get_gpu_ids() == []


def test_nodes_lists_this_node():
    nodes = anyray.nodes()
    assert len(nodes) >= 1
    alive = [node for node in nodes if node["Alive"]]
    assert alive
    for node in alive:
        assert isinstance(node["NodeID"], str) and node["NodeID"]
        assert node["Resources"]["CPU"] > 0
        assert "NodeManagerAddress" in node
    assert sum(node["Resources"].get("CPU", 0) for node in alive) == anyray.cluster_resources()["CPU"]


def test_runtime_context_in_the_driver():
    context = anyray.get_runtime_context()
    assert isinstance(context.get_job_id(), str) and context.get_job_id()
    assert context.get_actor_id() is None
    assert context.get_node_id() in {node["NodeID"] for node in anyray.nodes()}


def test_runtime_context_in_tasks():
    @anyray.remote
    def ids():
        context = anyray.get_runtime_context()
        return context.get_job_id(), context.get_task_id(), context.get_actor_id(), context.get_node_id()

    (job_a, task_a, actor_a, node_a), (job_b, task_b, _, _) = anyray.get([ids.remote(), ids.remote()])
    assert job_a == job_b == anyray.get_runtime_context().get_job_id()
    assert isinstance(task_a, str) and task_a and task_a != task_b
    assert actor_a is None
    assert node_a in {node["NodeID"] for node in anyray.nodes()}


def test_runtime_context_in_actors():
    @anyray.remote
    class Who:
        def ids(self):
            context = anyray.get_runtime_context()
            return context.get_actor_id(), context.get_task_id(), context.get_job_id()

    first, second = Who.remote(), Who.remote()
    (actor_1, task_1, job_1), (actor_1_again, task_2, _) = anyray.get([first.ids.remote(), first.ids.remote()])
    actor_2, _, _ = anyray.get(second.ids.remote())
    assert isinstance(actor_1, str) and actor_1
    assert actor_1 == actor_1_again != actor_2
    assert task_1 != task_2
    assert job_1 == anyray.get_runtime_context().get_job_id()


def test_runtime_context_worker_pid():
    @anyray.remote
    def pid():
        return anyray.get_runtime_context().pid, os.getpid()

    reported, actual = anyray.get(pid.remote())
    assert reported == actual


def test_the_unplaceable_warning_points_at_the_users_remote_call():
    @anyray.remote(resources={"NoSuchResource": 1})
    def unplaceable():
        return "ran"

    @anyray.remote(resources={"NoSuchResource": 1})
    class Unplaceable:
        def ping(self):
            return "pong"

    with pytest.warns(anyray.exceptions.InfeasibleTaskWarning) as caught:
        ref = unplaceable.remote()
    assert [w.filename for w in caught] == [__file__]
    with pytest.warns(anyray.exceptions.InfeasibleTaskWarning) as caught:
        actor = Unplaceable.remote()
    assert [w.filename for w in caught] == [__file__]
    anyray.cancel(ref)
    anyray.kill(actor)


def test_a_task_no_node_can_ever_place_warns_naming_it_and_waits():
    @anyray.remote(resources={"NoSuchResource": 1})
    def unplaceable():
        return "ran"

    with pytest.warns(anyray.exceptions.InfeasibleTaskWarning, match=r"unplaceable.*NoSuchResource"):
        ref = unplaceable.remote()
    ready, not_ready = anyray.wait([ref], timeout=0.5)
    assert ready == [] and not_ready == [ref]
    anyray.cancel(ref)
    with pytest.raises(anyray.exceptions.TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
