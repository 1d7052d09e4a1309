"""Placement groups on a cluster of real node daemons: two drivers racing for one node's last CPUs, a node
holding a bundle killed, detached groups outliving their driver, the CLI.

Every test runs its own cluster in a private cluster directory (``cluster_env`` of test_cluster.py), with
drivers in subprocesses, nodes killed by pid.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from servers import EtcdServer
from test_cluster import WAIT, cli, kill_node, start_head, status_nodes, two_nodes, wait_until

from anyray.adapters.cluster import files


@pytest.fixture(params=["redis", "etcd"])
def metadata(request, tmp_path):
    """The head's ``anyray start`` options for each metadata store: its own Redis, or an etcd server."""
    if request.param == "redis":
        yield ()
        return
    directory = tmp_path / "etcd"
    directory.mkdir()
    server = EtcdServer.start(str(directory))
    yield ("--metadata", server.url)
    server.stop()


def driver(env, body: str) -> subprocess.CompletedProcess:
    """A driver in the namespace "pg" (named groups are found in their own namespace only)."""
    code = "import anyray\nanyray.init(backend='cluster', address='auto', namespace='pg')\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=WAIT)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _groups(env) -> list[dict]:
    return json.loads(cli(env, "list", "placement-groups", "--format", "json").stdout)


def test_two_drivers_racing_for_the_last_cpus_one_group_is_created_none_half(cluster_env, tmp_path, metadata):
    two_nodes(cluster_env, ("--num-cpus", "1", *metadata), ("--num-cpus", "1"))
    go = tmp_path / "go"
    racer = textwrap.dedent(f"""
        import os, sys, time, anyray
        from anyray.util.placement_group import placement_group, placement_group_table
        anyray.init(backend="cluster", address="auto", namespace="pg")
        while not os.path.exists({str(go)!r}):
            time.sleep(0.005)
        group = placement_group([{{"CPU": 1}}, {{"CPU": 1}}], strategy="STRICT_SPREAD", name=sys.argv[1],
                                lifetime="detached")
        print(group.id.hex(), group.wait(10), flush=True)
    """)
    for round_ in range(3):
        procs = [subprocess.Popen([sys.executable, "-c", racer, f"g{round_}-{i}"], env=cluster_env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(2)]
        go.write_text("go")
        outs = [p.communicate(timeout=WAIT) for p in procs]
        go.unlink()
        for p, (_out, err) in zip(procs, outs):
            assert p.returncode == 0, err
        created = sorted(out.split()[1] for out, _ in outs)
        assert created == ["False", "True"], outs  # exactly one of the two
        rows = {g["placement_group_id"]: g for g in _groups(cluster_env) if g["name"].startswith(f"g{round_}-")}
        states = sorted(g["state"] for g in rows.values())
        assert states == ["CREATED", "PENDING"]
        loser = next(g for g in rows.values() if g["state"] == "PENDING")
        assert loser["nodes"] == ""  # no bundle of it is held anywhere
        out = _ok(driver(cluster_env, f"""
            from anyray.util.placement_group import get_placement_group, remove_placement_group
            print(anyray.available_resources().get("CPU", 0))
            winner = [n for n in {sorted(g["name"] for g in rows.values())!r}
                      if n != {loser["name"]!r}][0]
            remove_placement_group(get_placement_group(winner))
            loser = get_placement_group({loser["name"]!r})
            print(loser.wait(30))
            remove_placement_group(loser)
        """))
        assert out.split() == ["0", "True"]  # both CPUs held by the winner alone; the loser placed once free


def test_a_killed_node_s_bundle_is_placed_again_and_its_actor_restarts_there(cluster_env, metadata):
    head, other = two_nodes(cluster_env, ("--num-cpus", "2", *metadata), ("--num-cpus", "2"))
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, anyray
        from anyray.util.placement_group import placement_group, placement_group_table
        from anyray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
        anyray.init(backend="cluster", address="auto")
        group = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
        assert group.wait(30)

        @anyray.remote(num_cpus=1, max_restarts=1, max_task_retries=-1)
        class Where:
            def node(self):
                return anyray.get_runtime_context().get_node_id()

        before = placement_group_table(group)["bundles_to_node_id"]
        actors = [Where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group, i)).remote()
                  for i in (0, 1)]
        print(repr((before, anyray.get([a.node.remote() for a in actors], timeout=60))), flush=True)
        sys.stdin.readline()  # the test kills a node
        deadline = time.monotonic() + 60
        while placement_group_table(group)["state"] != "RESCHEDULING" and time.monotonic() < deadline:
            time.sleep(0.05)
        print(repr(placement_group_table(group)["state"]), flush=True)
        sys.stdin.readline()  # the test starts another node
        assert group.wait(60)
        after = placement_group_table(group)["bundles_to_node_id"]
        print(repr((after, anyray.get([a.node.remote() for a in actors], timeout=60))), flush=True)
    """)], env=cluster_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        before, nodes = eval(run.stdout.readline())  # noqa: S307 - our own repr
        assert sorted(before.values()) == sorted([head["node_id"], other["node_id"]])
        assert nodes == [before[0], before[1]]  # each actor runs on its bundle's node
        lost = next(i for i, n in before.items() if n == other["node_id"])
        kill_node(other)
        run.stdin.write("\n")
        run.stdin.flush()
        assert eval(run.stdout.readline()) == "RESCHEDULING"  # noqa: S307
        cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "2")
        run.stdin.write("\n")
        run.stdin.flush()
        after, nodes = eval(run.stdout.readline())  # noqa: S307
        third = [n for n in status_nodes(cluster_env) if n != head["node_id"]]
        assert after[1 - lost] == before[1 - lost]  # the bundle that was not lost kept its node
        assert [after[lost]] == third  # the lost one is on the new node
        assert nodes == [after[0], after[1]]  # the lost actor restarted there
    finally:
        run.kill()
        _, err = run.communicate()
    assert "Traceback" not in err, err


def test_a_detached_group_outlives_its_driver_and_the_others_go_with_it(cluster_env):
    start_head(cluster_env, "--num-cpus", "4")
    _ok(driver(cluster_env, """
        from anyray.util.placement_group import placement_group
        kept = placement_group([{"CPU": 1}], name="kept", lifetime="detached")
        gone = placement_group([{"CPU": 1}], name="gone")
        assert kept.wait(30) and gone.wait(30)
    """))
    wait_until(lambda: {g["name"]: g["state"] for g in _groups(cluster_env)} == {"kept": "CREATED",
                                                                                  "gone": "REMOVED"},
               "the driver's own group removed, the detached one kept")
    out = _ok(driver(cluster_env, """
        from anyray.util.placement_group import get_placement_group, remove_placement_group
        kept = get_placement_group("kept")
        print(kept.wait(5), anyray.available_resources()["CPU"])
        try:
            get_placement_group("gone")
        except ValueError:
            print("gone")
        remove_placement_group(kept)
    """))
    assert out.split() == ["True", "3.0", "gone"]
    wait_until(lambda: all(g["state"] == "REMOVED" for g in _groups(cluster_env)), "the detached group removed")


def test_list_and_status_show_the_placement_groups(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    assert "No placement groups." in cli(cluster_env, "list", "placement-groups").stdout
    _ok(driver(cluster_env, """
        from anyray.util.placement_group import placement_group
        assert placement_group([{"CPU": 1}], strategy="STRICT_PACK", name="shown", lifetime="detached").wait(30)
        placement_group([{"CPU": 8}], name="waiting", lifetime="detached")
    """))
    table = cli(cluster_env, "list", "placement-groups").stdout
    assert "PLACEMENT_GROUP_ID" in table and "shown" in table and "STRICT_PACK" in table
    rows = {g["name"]: g for g in _groups(cluster_env)}
    assert rows["shown"]["state"] == "CREATED" and rows["waiting"]["state"] == "PENDING"
    head = next(r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"]) if r["head"])
    assert rows["shown"]["nodes"] == head["node_id"][:8]
    status = cli(cluster_env, "status").stdout
    assert "Placement groups: 1 CREATED, 1 PENDING" in status
    assert "shown" in status and "waiting" in status and "(detached)" in status


def test_spread_work_that_needs_no_cpu_uses_every_node(cluster_env):
    # Zero-CPU work leaves every node's load as it was: equally loaded nodes take SPREAD work in turn (as
    # Ray's spread policy goes round the nodes), where all of it went to the driver's node before.
    two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1"))
    out = _ok(driver(cluster_env, """
        @anyray.remote(num_cpus=0)
        class Where:
            def node(self):
                return anyray.get_runtime_context().get_node_id()

        @anyray.remote(num_cpus=0, scheduling_strategy="SPREAD")
        def where():
            return anyray.get_runtime_context().get_node_id()

        actors = [Where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)]
        tasks = [where.remote() for _ in range(6)]
        print(len(set(anyray.get([a.node.remote() for a in actors]))), len(set(anyray.get(tasks))))
    """))
    assert out.split() == ["2", "2"]
