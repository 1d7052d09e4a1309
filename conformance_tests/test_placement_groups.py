"""Placement groups and scheduling strategies, as Ray 2.x has them (``ray.util.placement_group``,
``ray.util.scheduling_strategies``).

The first part holds on any backend, one node or many: it reserves the
session's custom resource ``Custom`` (2 units, on one node of a cluster) so
that it never competes with other tests for CPUs. ``TestAcrossNodes`` needs
two alive nodes (the cluster conformance runs, and the Ray plugin's
two-node run) and shows where bundles and spread work land.
"""

import pickle
import uuid

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Arrivals, hold_until_all_arrive, hold_until_set, wait_until
from anyray.exceptions import (
    ActorDiedError,
    ActorUnschedulableError,
    GetTimeoutError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from anyray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy

pytestmark = pytest.mark.usefixtures("anyray_session")

STATES = {"PENDING", "CREATED", "REMOVED", "RESCHEDULING"}
TABLE_KEYS = {"placement_group_id", "name", "bundles", "bundles_to_node_id", "strategy", "state"}


@pytest.fixture
def make_group():
    """``placement_group(...)``, each group made removed when the test ends."""
    made = []

    def make(bundles, **kwargs):
        group = placement_group(bundles, **kwargs)
        made.append(group)
        return group

    yield make
    for group in made:
        remove_placement_group(group)


def in_group(group, index=-1, capture=None):
    return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=index,
                                            placement_group_capture_child_tasks=capture)


def created(group) -> PlacementGroup:
    assert group.wait(DEADLINE), f"placement group {group.id.hex()} was not created within {DEADLINE} s"
    return group


def still_pending(ref) -> bool:
    ready, _ = anyray.wait([ref], timeout=0.5)
    return not ready


def _current_hex():
    group = get_current_placement_group()
    return None if group is None else group.id.hex()


@anyray.remote(num_cpus=0)
def current_group():
    return _current_hex()


@anyray.remote(num_cpus=0)
def current_group_and_child(child_strategy=None):
    child = current_group.options(scheduling_strategy=child_strategy) if child_strategy else current_group
    return _current_hex(), anyray.get(child.remote(), timeout=DEADLINE)


@anyray.remote(num_cpus=0)
def current_group_of_grandchild():
    return anyray.get(current_group_and_child.remote(), timeout=DEADLINE)


@anyray.remote(num_cpus=0)
def node_id():
    return anyray.get_runtime_context().get_node_id()


@anyray.remote(num_cpus=0, max_retries=0)
def hold(signal, value=None):
    hold_until_set(signal)  # polls: keeps its resources while it waits
    return value


@anyray.remote(num_cpus=0)
class GroupProbe:
    def group(self):
        return _current_hex()

    def node(self):
        return anyray.get_runtime_context().get_node_id()

    def hold(self, signal):
        hold_until_set(signal)
        return "done"

    def child_group(self):
        return anyray.get(current_group.remote(), timeout=DEADLINE)


# -- bad input ----------------------------------------------------------------------------------


def test_empty_bundles_are_rejected():
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])


@pytest.mark.parametrize("bundle", [{}, {"CPU": 0}, {"CPU": 0, "Custom": 0}], ids=["empty", "zero", "all-zero"])
def test_a_bundle_of_no_resources_is_rejected(bundle):
    with pytest.raises(ValueError, match="empty dictionary or resources with only 0 values"):
        placement_group([{"CPU": 1}, bundle])


@pytest.mark.parametrize("bundles", [[1], [{"CPU": "1"}], [{1: 1}]], ids=["not-a-dict", "str-amount", "int-key"])
def test_a_bundle_that_is_not_a_dict_of_amounts_is_rejected(bundles):
    with pytest.raises(ValueError, match="resource dictionaries"):
        placement_group(bundles)


@pytest.mark.parametrize("strategy", ["FOO", "pack", "spread"])
def test_an_unknown_strategy_is_rejected(strategy):
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy=strategy)


@pytest.mark.parametrize("lifetime", ["forever", "non_detached"])
def test_a_lifetime_other_than_none_or_detached_is_rejected(lifetime):
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime=lifetime)


def test_a_name_that_is_not_a_string_is_rejected():
    with pytest.raises(TypeError):
        placement_group([{"CPU": 1}], name=5)


def test_get_placement_group_of_an_unknown_or_empty_name_raises():
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group(f"no-such-group-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ValueError, match="non-empty"):
        get_placement_group("")


def test_a_bundle_index_out_of_range_is_rejected_at_the_call(make_group):
    group = created(make_group([{"Custom": 1}, {"Custom": 1}]))
    for index in (2, -2):
        with pytest.raises(ValueError, match=f"bundle index {index} is invalid"):
            current_group.options(scheduling_strategy=in_group(group, index)).remote()


def test_work_that_fits_no_bundle_is_rejected_at_the_call(make_group):
    group = created(make_group([{"Custom": 1}]))
    with pytest.raises(ValueError, match="cannot fit into any bundles"):
        current_group.options(resources={"Custom": 2}, scheduling_strategy=in_group(group)).remote()
    with pytest.raises(ValueError, match="cannot fit into any bundles"):  # a task takes 1 CPU unless told
        anyray.remote(lambda: 1).options(scheduling_strategy=in_group(group)).remote()


def test_a_bundle_index_without_a_group_is_rejected():
    with pytest.raises(ValueError, match="bundle index must be -1"):
        current_group.options(scheduling_strategy=PlacementGroupSchedulingStrategy(None, 0)).remote()


@pytest.mark.parametrize("strategy", ["FOO", "spread"])
def test_an_unknown_scheduling_strategy_string_is_rejected(strategy):
    with pytest.raises(ValueError, match="Invalid scheduling_strategy"):
        current_group.options(scheduling_strategy=strategy).remote()


def test_a_scheduling_strategy_of_another_type_is_rejected():
    with pytest.raises(TypeError, match="scheduling_strategy"):
        current_group.options(scheduling_strategy=5)


def test_node_affinity_needs_soft_and_a_hex_node_id():
    node = anyray.get_runtime_context().get_node_id()
    with pytest.raises(TypeError, match="soft"):
        NodeAffinitySchedulingStrategy(node)
    with pytest.raises(ValueError, match="Invalid node_id"):
        NodeAffinitySchedulingStrategy("zz", soft=False)
    strategy = NodeAffinitySchedulingStrategy(node, soft=True)
    assert (strategy.node_id, strategy.soft) == (node, True)


def test_a_name_taken_by_a_live_group_is_rejected(make_group):
    name = f"taken-{uuid.uuid4().hex[:8]}"
    created(make_group([{"Custom": 1}], name=name))
    with pytest.raises(ValueError, match="already exists"):
        make_group([{"Custom": 1}], name=name)


# -- the group and its handle -------------------------------------------------------------------


def test_ready_resolves_to_the_group_once_created(make_group):
    group = make_group([{"Custom": 1}, {"CPU": 1}])
    ready = group.ready()
    assert isinstance(ready, anyray.ObjectRef)
    done, _ = anyray.wait([ready], timeout=DEADLINE)
    assert done == [ready]
    assert anyray.get(ready, timeout=DEADLINE) == group
    assert group.wait(DEADLINE) is True


def test_bundle_specs_and_count_are_known_at_once(make_group):
    group = make_group([{"Custom": 1}, {"CPU": 1, "Custom": 0.5}], strategy="PACK")
    assert group.bundle_specs == [{"Custom": 1.0}, {"CPU": 1.0, "Custom": 0.5}]
    assert group.bundle_count == 2
    created(group)


def test_a_group_handle_is_a_value_equal_by_id(make_group):
    group = created(make_group([{"Custom": 1}]))
    assert isinstance(group.id.hex(), str) and len(group.id.hex()) > 0
    copy = pickle.loads(pickle.dumps(group))
    assert copy == group and hash(copy) == hash(group) and {group, copy} == {group}
    assert copy.bundle_specs == [{"Custom": 1.0}]
    assert group != created(make_group([{"Custom": 1}]))


def test_a_group_handle_passed_to_a_task_arrives_equal():
    @anyray.remote(num_cpus=0)
    def inspect(g):
        return g.id.hex(), g.bundle_specs, g.bundle_count, anyray.get(g.ready(), timeout=DEADLINE) == g

    group = placement_group([{"Custom": 1}, {"Custom": 1}])
    try:
        created(group)
        assert anyray.get(inspect.remote(group), timeout=DEADLINE) == (
            group.id.hex(), [{"Custom": 1.0}, {"Custom": 1.0}], 2, True)
    finally:
        remove_placement_group(group)


def test_placement_group_table_of_a_created_group(make_group):
    name = f"tabled-{uuid.uuid4().hex[:8]}"
    group = created(make_group([{"Custom": 1}, {"CPU": 1}], strategy="STRICT_PACK", name=name))
    row = placement_group_table(group)
    assert TABLE_KEYS <= set(row)
    assert row["placement_group_id"] == group.id.hex()
    assert row["name"] == name
    assert row["strategy"] == "STRICT_PACK"
    assert row["state"] == "CREATED"
    assert row["bundles"] == {0: {"Custom": 1.0}, 1: {"CPU": 1.0}}
    alive = {n["NodeID"] for n in anyray.nodes() if n["Alive"]}
    assert set(row["bundles_to_node_id"]) == {0, 1} and set(row["bundles_to_node_id"].values()) <= alive
    everything = placement_group_table()
    assert everything[group.id.hex()]["state"] == "CREATED"
    assert all(r["state"] in STATES for r in everything.values())


def test_the_default_strategy_is_pack(make_group):
    group = created(make_group([{"Custom": 1}]))
    assert placement_group_table(group)["strategy"] == "PACK"


def test_get_placement_group_finds_a_named_group_from_anywhere(make_group):
    name = f"findable-{uuid.uuid4().hex[:8]}"
    group = created(make_group([{"Custom": 1}], name=name))
    found = get_placement_group(name)
    assert found == group and found.bundle_specs == [{"Custom": 1.0}]

    @anyray.remote(num_cpus=0)
    def find(name):
        return get_placement_group(name).id.hex()

    assert anyray.get(find.remote(name), timeout=DEADLINE) == group.id.hex()


def test_a_detached_group_is_created_like_any_other(make_group):
    group = created(make_group([{"Custom": 1}], name=f"detached-{uuid.uuid4().hex[:8]}", lifetime="detached"))
    assert placement_group_table(group)["state"] == "CREATED"


# -- reservation --------------------------------------------------------------------------------


def test_reserved_resources_are_used_only_by_work_in_the_group(make_group):
    total = anyray.cluster_resources()["Custom"]
    group = created(make_group([{"Custom": 1}] * int(total)))
    wait_until(lambda: anyray.available_resources().get("Custom", 0) == 0, what="the group's Custom reserved")
    assert anyray.cluster_resources()["Custom"] == total
    outside = current_group.options(resources={"Custom": 1}).remote()
    assert still_pending(outside)  # every unit is reserved: work outside the group cannot have one
    inside = [current_group.options(resources={"Custom": 1}, scheduling_strategy=in_group(group)).remote()
              for _ in range(int(total) * 2)]
    assert anyray.get(inside, timeout=DEADLINE) == [group.id.hex()] * len(inside)
    remove_placement_group(group)
    assert anyray.get(outside, timeout=DEADLINE) is None


def test_a_group_is_created_all_or_nothing(make_group, signal):
    total = int(anyray.cluster_resources()["Custom"])
    holder = hold.options(resources={"Custom": 1}).remote(signal)
    wait_until(lambda: anyray.available_resources().get("Custom", 0) == total - 1, what="one Custom held")
    group = make_group([{"Custom": 1}] * total)
    assert still_pending(group.ready())
    assert placement_group_table(group)["state"] == "PENDING"
    # The free units are not taken by a half-made group: other work still gets one.
    assert anyray.get(current_group.options(resources={"Custom": 1}).remote(), timeout=DEADLINE) is None
    queued = current_group.options(resources={"Custom": 1}, scheduling_strategy=in_group(group)).remote()
    assert still_pending(queued)
    signal.send.remote()
    anyray.get(holder, timeout=DEADLINE)
    assert anyray.get(group.ready(), timeout=DEADLINE) == group
    assert anyray.get(queued, timeout=DEADLINE) == group.id.hex()


def test_a_group_no_node_can_hold_stays_pending(make_group):
    group = make_group([{"Custom": 1}, {"Custom": 1000}])
    assert still_pending(group.ready())
    assert group.wait(0.5) is False
    row = placement_group_table(group)
    assert row["state"] == "PENDING" and set(row["bundles_to_node_id"]) == {0, 1}


def test_work_runs_in_the_bundle_it_names(make_group):
    group = created(make_group([{"CPU": 1}, {"Custom": 1}]))
    ref = current_group.options(resources={"Custom": 1}, scheduling_strategy=in_group(group, 1)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == group.id.hex()
    # Any bundle with room (-1) takes work that fits only some of them.
    ref = current_group.options(resources={"Custom": 1}, scheduling_strategy=in_group(group, -1)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == group.id.hex()


def test_an_actor_runs_in_its_group(make_group):
    group = created(make_group([{"Custom": 1}]))
    probe = GroupProbe.options(resources={"Custom": 1}, scheduling_strategy=in_group(group, 0)).remote()
    assert anyray.get(probe.group.remote(), timeout=DEADLINE) == group.id.hex()



def test_actors_into_any_bundle_each_take_a_bundle_of_their_own(make_group):
    group = created(make_group([{"Custom": 1}, {"Custom": 1}]))
    probes = [GroupProbe.options(resources={"Custom": 1}, scheduling_strategy=in_group(group)).remote()
              for _ in range(2)]
    try:
        assert anyray.get([p.group.remote() for p in probes], timeout=DEADLINE) == [group.id.hex()] * 2
    finally:
        for probe in probes:
            anyray.kill(probe)

# -- the current group, and child tasks ---------------------------------------------------------


def test_get_current_placement_group_is_none_outside_a_group():
    assert get_current_placement_group() is None
    assert anyray.get(current_group.remote(), timeout=DEADLINE) is None
    assert anyray.get(GroupProbe.remote().group.remote(), timeout=DEADLINE) is None


def test_get_current_placement_group_inside_a_group_is_that_group(make_group):
    group = created(make_group([{"Custom": 1}]))

    @anyray.remote(num_cpus=0)
    def current():
        return get_current_placement_group()

    assert anyray.get(current.options(scheduling_strategy=in_group(group)).remote(), timeout=DEADLINE) == group


def test_child_tasks_stay_out_of_the_group_unless_captured(make_group):
    group = created(make_group([{"Custom": 1}]))
    ref = current_group_and_child.options(scheduling_strategy=in_group(group)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), None)
    ref = current_group_and_child.options(scheduling_strategy=in_group(group, capture=False)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), None)


def test_captured_child_tasks_run_in_the_group_and_so_do_theirs(make_group):
    group = created(make_group([{"Custom": 1}]))
    ref = current_group_and_child.options(scheduling_strategy=in_group(group, capture=True)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), group.id.hex())
    ref = current_group_of_grandchild.options(scheduling_strategy=in_group(group, capture=True)).remote()
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), group.id.hex())


def test_an_actor_captures_the_tasks_it_starts_only_when_asked(make_group):
    group = created(make_group([{"Custom": 1}]))
    capturing = GroupProbe.options(scheduling_strategy=in_group(group, capture=True)).remote()
    assert anyray.get(capturing.child_group.remote(), timeout=DEADLINE) == group.id.hex()
    plain = GroupProbe.options(scheduling_strategy=in_group(group)).remote()
    assert anyray.get(plain.group.remote(), timeout=DEADLINE) == group.id.hex()
    assert anyray.get(plain.child_group.remote(), timeout=DEADLINE) is None


@pytest.mark.parametrize("opt_out", ["DEFAULT", PlacementGroupSchedulingStrategy(None)], ids=["DEFAULT", "no-group"])
def test_a_child_with_a_strategy_of_its_own_is_not_captured(make_group, opt_out):
    group = created(make_group([{"Custom": 1}]))
    ref = current_group_and_child.options(scheduling_strategy=in_group(group, capture=True)).remote(opt_out)
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), None)


# -- removal ------------------------------------------------------------------------------------


def test_a_removed_group_is_gone(make_group):
    name = f"removed-{uuid.uuid4().hex[:8]}"
    group = created(make_group([{"Custom": 1}], name=name))
    remove_placement_group(group)
    remove_placement_group(group)  # again: nothing happens
    wait_until(lambda: placement_group_table(group)["state"] == "REMOVED", what="the group REMOVED")
    with pytest.raises(ValueError, match="Failed to look up placement group"):
        get_placement_group(name)
    with pytest.raises(TaskPlacementGroupRemoved):
        anyray.get(group.ready(), timeout=DEADLINE)
    with pytest.raises(Exception, match="does not exist"):
        group.wait(1)
    assert group.bundle_specs == [{"Custom": 1.0}]


def test_removing_a_pending_group_fails_its_ready_ref(make_group):
    group = make_group([{"Custom": 1000}])
    ready = group.ready()
    assert still_pending(ready)
    remove_placement_group(group)
    with pytest.raises(TaskPlacementGroupRemoved):
        anyray.get(ready, timeout=DEADLINE)
    assert placement_group_table(group)["state"] == "REMOVED"


def test_removing_a_group_kills_its_actors(make_group, signal):
    group = created(make_group([{"Custom": 1}]))
    probe = GroupProbe.options(resources={"Custom": 1}, scheduling_strategy=in_group(group)).remote()
    assert anyray.get(probe.group.remote(), timeout=DEADLINE) == group.id.hex()
    running = probe.hold.remote(signal)
    remove_placement_group(group)
    with pytest.raises(ActorDiedError):
        anyray.get(running, timeout=DEADLINE)
    with pytest.raises(ActorDiedError):
        anyray.get(probe.group.remote(), timeout=DEADLINE)
    wait_until(lambda: anyray.available_resources().get("Custom", 0) == anyray.cluster_resources()["Custom"],
               what="the group's Custom released")


def test_removing_a_group_fails_its_queued_tasks(make_group, signal):
    group = created(make_group([{"Custom": 1}]))
    strategy = in_group(group)
    running = hold.options(resources={"Custom": 1}, scheduling_strategy=strategy).remote(signal)
    queued = current_group.options(resources={"Custom": 1}, scheduling_strategy=strategy).remote()
    assert still_pending(queued)
    remove_placement_group(group)
    with pytest.raises(TaskPlacementGroupRemoved):
        anyray.get(queued, timeout=DEADLINE)
    anyray.wait([running], timeout=DEADLINE)  # its worker is killed with the group; nothing waits on it


@anyray.remote(num_cpus=0, max_retries=0)
def arrive_and_hold(arrivals, signal):
    arrivals.arrive.remote()
    hold_until_set(signal)
    return "ran"


@pytest.mark.requires("processes")
def test_removing_a_group_kills_its_running_tasks(make_group, signal):
    group = created(make_group([{"Custom": 1}]))
    arrivals = Arrivals.remote()
    running = arrive_and_hold.options(resources={"Custom": 1}, scheduling_strategy=in_group(group)).remote(
        arrivals, signal)
    wait_until(lambda: anyray.get(arrivals.arrived.remote(), timeout=DEADLINE) == 1, what="the task started")
    remove_placement_group(group)
    with pytest.raises(WorkerCrashedError):  # max_retries=0: its worker is killed with the group
        anyray.get(running, timeout=DEADLINE)


# -- the deprecated placement options -----------------------------------------------------------


def _warned(record, text: str) -> bool:
    return any(issubclass(w.category, DeprecationWarning) and text in str(w.message) for w in record)


def test_the_old_placement_group_options_still_work_and_warn(make_group):
    group = created(make_group([{"Custom": 1}, {"Custom": 1}]))
    with pytest.warns(DeprecationWarning) as record:
        ref = current_group.options(placement_group=group).remote()
    assert _warned(record, "placement_group parameter is deprecated")
    assert anyray.get(ref, timeout=DEADLINE) == group.id.hex()
    with pytest.warns(DeprecationWarning) as record:
        ref = current_group.options(placement_group=group, placement_group_bundle_index=1).remote()
    assert _warned(record, "placement_group_bundle_index parameter is deprecated")
    assert anyray.get(ref, timeout=DEADLINE) == group.id.hex()
    with pytest.warns(DeprecationWarning) as record:
        ref = current_group_and_child.options(placement_group=group,
                                              placement_group_capture_child_tasks=True).remote()
    assert _warned(record, "placement_group_capture_child_tasks parameter is deprecated")
    assert anyray.get(ref, timeout=DEADLINE) == (group.id.hex(), group.id.hex())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_old_placement_group_option_with_a_scheduling_strategy_is_rejected(make_group):
    group = created(make_group([{"Custom": 1}]))
    with pytest.raises(ValueError, match="scheduling_strategy"):
        current_group.options(placement_group=group, scheduling_strategy="SPREAD").remote()
    with pytest.raises(ValueError, match="bundle index must be -1"):
        current_group.options(placement_group_bundle_index=0).remote()


# -- other strategies ---------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["DEFAULT", "SPREAD"])
def test_default_and_spread_run_tasks_and_actors(strategy):
    assert anyray.get([current_group.options(scheduling_strategy=strategy).remote() for _ in range(3)],
                      timeout=DEADLINE) == [None] * 3
    probe = GroupProbe.options(scheduling_strategy=strategy).remote()
    assert anyray.get(probe.group.remote(), timeout=DEADLINE) is None


def test_hard_node_affinity_runs_on_that_node():
    node = anyray.get_runtime_context().get_node_id()  # the driver's node
    strategy = NodeAffinitySchedulingStrategy(node, soft=False)
    assert anyray.get([node_id.options(scheduling_strategy=strategy).remote() for _ in range(3)],
                      timeout=DEADLINE) == [node] * 3
    probe = GroupProbe.options(scheduling_strategy=strategy).remote()
    assert anyray.get(probe.node.remote(), timeout=DEADLINE) == node


def _unknown_node_id() -> str:
    alive = {n["NodeID"] for n in anyray.nodes()}
    some = next(iter(alive))
    for digit in "0123456789abcdef":
        candidate = digit + some[1:]
        if candidate not in alive:
            return candidate
    raise AssertionError("no unknown node id found")


def test_hard_node_affinity_to_an_unknown_node_fails():
    strategy = NodeAffinitySchedulingStrategy(_unknown_node_id(), soft=False)
    with pytest.raises(TaskUnschedulableError):
        anyray.get(node_id.options(scheduling_strategy=strategy).remote(), timeout=DEADLINE)
    probe = GroupProbe.options(scheduling_strategy=strategy).remote()
    with pytest.raises(ActorUnschedulableError):
        anyray.get(probe.node.remote(), timeout=DEADLINE)


def test_soft_node_affinity_to_an_unknown_node_runs_elsewhere():
    strategy = NodeAffinitySchedulingStrategy(_unknown_node_id(), soft=True)
    alive = {n["NodeID"] for n in anyray.nodes() if n["Alive"]}
    assert anyray.get(node_id.options(scheduling_strategy=strategy).remote(), timeout=DEADLINE) in alive


@pytest.mark.parametrize("strategy", ["PACK", "SPREAD", "STRICT_PACK"])
def test_strategies_that_fit_one_node_create_the_group(make_group, strategy):
    group = created(make_group([{"Custom": 1}, {"Custom": 1}], strategy=strategy))  # Custom is on one node
    row = placement_group_table(group)
    assert row["strategy"] == strategy and row["state"] == "CREATED"
    assert len(set(row["bundles_to_node_id"].values())) == 1


def test_strict_spread_over_bundles_only_one_node_can_hold_stays_pending(make_group):
    group = make_group([{"Custom": 1}, {"Custom": 1}], strategy="STRICT_SPREAD")  # Custom is on one node
    assert still_pending(group.ready())
    assert placement_group_table(group)["state"] == "PENDING"


def test_get_with_a_timeout_on_a_pending_group_times_out(make_group):
    group = make_group([{"Custom": 1000}])
    with pytest.raises(GetTimeoutError):
        anyray.get(group.ready(), timeout=0.5)


# -- several nodes ------------------------------------------------------------------------------


@pytest.mark.requires("multi_node")
class TestAcrossNodes:
    """Where bundles and spread work land on a cluster of two nodes or more (CPUs on every node)."""

    @pytest.fixture(autouse=True)
    def _nodes(self, anyray_session):
        alive = [n for n in anyray.nodes() if n["Alive"]]
        if len(alive) < 2:
            pytest.skip("needs a cluster of two nodes or more")
        self.nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in alive}
        # Where best-effort strategies put work depends on what is free: start from an idle cluster (a
        # group removed by the test before is released asynchronously).
        wait_until(lambda: anyray.available_resources().get("CPU", 0) == anyray.cluster_resources()["CPU"],
                   what="every CPU of the cluster free")

    def _placed(self, group):
        return created(group) and placement_group_table(group)["bundles_to_node_id"]

    def test_strict_spread_puts_each_bundle_on_a_node_of_its_own(self, make_group):
        group = make_group([{"CPU": 0.5}] * len(self.nodes), strategy="STRICT_SPREAD")
        placed = self._placed(group)
        assert sorted(placed.values()) == sorted(self.nodes)
        for index, node in placed.items():
            ref = node_id.options(num_cpus=0.5, scheduling_strategy=in_group(group, index)).remote()
            assert anyray.get(ref, timeout=DEADLINE) == node

    def test_strict_spread_with_more_bundles_than_nodes_stays_pending(self, make_group):
        group = make_group([{"CPU": 0.1}] * (len(self.nodes) + 1), strategy="STRICT_SPREAD")
        assert still_pending(group.ready())
        assert placement_group_table(group)["state"] == "PENDING"

    def test_strict_pack_puts_every_bundle_on_one_node(self, make_group):
        group = make_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="STRICT_PACK")
        placed = self._placed(group)
        assert len(set(placed.values())) == 1
        refs = [node_id.options(num_cpus=0.5, scheduling_strategy=in_group(group, i)).remote() for i in (0, 1)]
        assert set(anyray.get(refs, timeout=DEADLINE)) == set(placed.values())

    def test_strict_pack_larger_than_any_node_stays_pending_while_pack_spans_nodes(self, make_group):
        largest = max(self.nodes.values())
        if largest >= sum(self.nodes.values()) - 0.5:
            pytest.skip("needs the cluster's CPUs spread over its nodes")
        bundles = [{"CPU": 0.5}] * int((largest + 0.5) / 0.5)  # half a CPU more than the largest node has
        strict = make_group(bundles, strategy="STRICT_PACK")
        assert still_pending(strict.ready())
        remove_placement_group(strict)
        placed = self._placed(make_group(bundles, strategy="PACK"))
        assert len(set(placed.values())) > 1

    def test_pack_that_fits_one_node_uses_one_node(self, make_group):
        placed = self._placed(make_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="PACK"))
        assert len(set(placed.values())) == 1

    def test_spread_puts_bundles_on_different_nodes_when_it_can(self, make_group):
        placed = self._placed(make_group([{"CPU": 0.5}, {"CPU": 0.5}], strategy="SPREAD"))
        assert len(set(placed.values())) == 2

    def test_actors_in_a_group_spread_over_nodes_run_on_their_bundles_nodes(self, make_group):
        group = make_group([{"CPU": 0.5}] * len(self.nodes), strategy="STRICT_SPREAD")
        placed = self._placed(group)
        indexes = sorted(placed)
        probes = [GroupProbe.options(num_cpus=0.5, scheduling_strategy=in_group(group, i)).remote() for i in indexes]
        try:
            assert anyray.get([p.node.remote() for p in probes], timeout=DEADLINE) == [placed[i] for i in indexes]
            assert anyray.get([p.group.remote() for p in probes], timeout=DEADLINE) == [group.id.hex()] * len(probes)
        finally:
            for probe in probes:
                anyray.kill(probe)

    def test_work_into_any_bundle_runs_on_the_group_s_nodes_and_each_node_holds_its_bundles(self, make_group):
        group = make_group([{"CPU": 1}] * len(self.nodes), strategy="STRICT_SPREAD")
        placed = self._placed(group)
        wait_until(lambda: anyray.available_resources().get("CPU", 0) == anyray.cluster_resources()["CPU"]
                   - len(self.nodes), what="one CPU of each node held by the group")
        refs = [node_id.options(num_cpus=1, scheduling_strategy=in_group(group)).remote() for _ in range(6)]
        assert set(anyray.get(refs, timeout=DEADLINE)) <= set(placed.values())
        remove_placement_group(group)
        wait_until(lambda: anyray.available_resources().get("CPU", 0) == anyray.cluster_resources()["CPU"],
                   what="the group's CPUs back on every node")

    def test_actors_into_any_bundle_each_get_a_free_bundle_whatever_its_node(self, make_group):
        # Each actor holds its bundle's whole CPU: the second must go to the bundle left free, on the
        # other node, not wait behind the first for the bundle on the caller's node.
        group = make_group([{"CPU": 1}] * len(self.nodes), strategy="STRICT_SPREAD")
        placed = self._placed(group)
        probes = [GroupProbe.options(num_cpus=1, scheduling_strategy=in_group(group)).remote() for _ in placed]
        try:
            assert sorted(anyray.get([p.node.remote() for p in probes], timeout=DEADLINE)) == sorted(placed.values())
        finally:
            for probe in probes:
                anyray.kill(probe)

    def test_actors_into_any_bundle_of_a_spread_group_all_start(self, make_group):
        # SPREAD's bundles land on different nodes when they can; actors into any bundle fill them all.
        count = 2 * len(self.nodes)
        group = make_group([{"CPU": 0.5}] * count, strategy="SPREAD")
        placed = self._placed(group)
        probes = [GroupProbe.options(num_cpus=0.5, scheduling_strategy=in_group(group)).remote() for _ in range(count)]
        try:
            assert sorted(anyray.get([p.node.remote() for p in probes], timeout=DEADLINE)) == sorted(placed.values())
        finally:
            for probe in probes:
                anyray.kill(probe)

    def test_hard_node_affinity_runs_on_each_named_node(self):
        for node in self.nodes:
            strategy = NodeAffinitySchedulingStrategy(node, soft=False)
            assert anyray.get([node_id.options(scheduling_strategy=strategy).remote() for _ in range(3)],
                              timeout=DEADLINE) == [node] * 3

    def test_spread_tasks_run_on_every_node(self):
        arrivals = Arrivals.remote()
        parties = len(self.nodes)

        @anyray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def spread(arrivals):
            hold_until_all_arrive(arrivals, parties)  # all hold a CPU at once
            return anyray.get_runtime_context().get_node_id()

        assert set(anyray.get([spread.remote(arrivals) for _ in range(parties)], timeout=DEADLINE)) == set(self.nodes)

    def test_spread_actors_run_on_every_node(self):
        # Each holds a CPU: Ray spreads actors that need none only now and then.
        probes = [GroupProbe.options(num_cpus=1, scheduling_strategy="SPREAD").remote() for _ in self.nodes]
        try:
            assert set(anyray.get([p.node.remote() for p in probes], timeout=DEADLINE)) == set(self.nodes)
        finally:
            for probe in probes:
                anyray.kill(probe)
