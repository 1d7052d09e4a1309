"""Work that once waited forever on a cluster of two real node daemons (2 CPUs each): actors into any
bundle (index -1) of a placement group whose bundles are on both nodes, which all went to a bundle of the
caller's node and waited there behind the first while the other node's bundle stayed free; and calls to
an actor waiting for its group to be placed, which failed after 30 s as if the actor did not exist.

Every test runs its own cluster in a private cluster directory (``cluster_env`` of conftest.py), with
its driver in a subprocess, so a hang fails the test (a timeout) instead of stopping the run.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from test_cluster import WAIT, two_nodes

from anyray.adapters.cluster.actor_calls import LOOKUP_SECONDS

HEADER = """
import anyray
from anyray.util.placement_group import placement_group, placement_group_table, remove_placement_group
from anyray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as InGroup
anyray.init(backend="cluster", address="auto")

@anyray.remote
class Probe:
    def node(self):
        return anyray.get_runtime_context().get_node_id()

@anyray.remote
def node():
    return anyray.get_runtime_context().get_node_id()
"""


def driver(env, body: str) -> str:
    """Run ``body`` after HEADER in a driver process; its stdout (it must exit 0 within the timeout)."""
    code = HEADER + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=3 * WAIT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _two_nodes(env) -> None:
    two_nodes(env, ("--num-cpus", "2"), ("--num-cpus", "2"))


def test_actors_into_any_bundle_of_a_spread_group_each_take_a_free_bundle(cluster_env):
    _two_nodes(cluster_env)
    out = driver(cluster_env, """
        group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
        anyray.get(group.ready(), timeout=60)
        placed = placement_group_table(group)["bundles_to_node_id"]
        assert len(set(placed.values())) == 2, placed
        probes = [Probe.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote() for _ in range(2)]
        where = anyray.get([p.node.remote() for p in probes], timeout=60)
        assert sorted(where) == sorted(placed.values()), (where, placed)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_actors_made_before_their_group_is_placed_fill_every_bundle(cluster_env):
    # no ready() first: the actors wait for the group, then spread over its bundles as they find room
    _two_nodes(cluster_env)
    out = driver(cluster_env, """
        group = placement_group([{"CPU": 1}] * 4, strategy="SPREAD")
        probes = [Probe.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote() for _ in range(4)]
        where = anyray.get([p.node.remote() for p in probes], timeout=60)
        placed = placement_group_table(group)["bundles_to_node_id"]
        assert sorted(where) == sorted(placed.values()), (where, placed)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_an_actor_into_any_bundle_goes_to_the_bundle_large_enough(cluster_env):
    _two_nodes(cluster_env)
    out = driver(cluster_env, """
        group = placement_group([{"CPU": 1}, {"CPU": 2}], strategy="SPREAD")
        anyray.get(group.ready(), timeout=60)
        placed = placement_group_table(group)["bundles_to_node_id"]
        big = Probe.options(num_cpus=2, scheduling_strategy=InGroup(group)).remote()
        small = Probe.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote()
        assert anyray.get(big.node.remote(), timeout=60) == placed[1]
        assert anyray.get(small.node.remote(), timeout=60) == placed[0]
        print("ok")
    """)
    assert out.strip() == "ok"


def test_tasks_into_any_bundle_next_to_an_actor_holding_one_run(cluster_env):
    _two_nodes(cluster_env)
    out = driver(cluster_env, """
        group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
        anyray.get(group.ready(), timeout=60)
        placed = placement_group_table(group)["bundles_to_node_id"]
        probe = Probe.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote()
        held = anyray.get(probe.node.remote(), timeout=60)
        free = [n for n in placed.values() if n != held]
        where = anyray.get([node.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote()
                            for _ in range(4)], timeout=60)
        assert set(where) == set(free), (where, free)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_a_call_to_an_actor_waiting_for_its_group_waits_past_the_lookup_limit(cluster_env):
    # The actor's group cannot be placed while another group holds every CPU: its calls wait (as on Ray),
    # longer than a call waits for an actor's record (actor_calls.LOOKUP_SECONDS), then run once it is placed.
    _two_nodes(cluster_env)
    out = driver(cluster_env, f"""
        hog = placement_group([{{"CPU": 2}}, {{"CPU": 2}}], strategy="STRICT_SPREAD")
        anyray.get(hog.ready(), timeout=60)
        group = placement_group([{{"CPU": 1}}])
        probe = Probe.options(num_cpus=1, scheduling_strategy=InGroup(group)).remote()
        ref = probe.node.remote()
        ready, _ = anyray.wait([ref], timeout={LOOKUP_SECONDS + 5})
        assert not ready
        remove_placement_group(hog)
        assert anyray.get(ref, timeout=60) == placement_group_table(group)["bundles_to_node_id"][0]
        print("ok")
    """)
    assert out.strip() == "ok"
