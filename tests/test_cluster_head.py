"""The head's death with the metadata store elsewhere: a cluster whose nodes share a Redis (or a three-member
etcd cluster) the test runs goes on without its head, as every node of it is a peer (see the README's
"The head" section): the other nodes and their drivers keep working, and the head's actors restart on the
survivors within their max_restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from servers import EtcdCluster, RedisServer
from test_cluster import WAIT, cli, start_head, status_nodes, wait_until

from anyray.adapters.cluster import files

SURVIVE = """
    import sys, time
    import anyray
    from anyray.util.placement_group import placement_group
    from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
    anyray.init(address={address!r})
    HEAD, OTHER = {head!r}, {other!r}

    @anyray.remote
    class Where:
        def node(self):
            ctx = anyray.get_runtime_context()
            return ctx.get_node_id(), ctx.was_current_actor_reconstructed

    @anyray.remote
    def where(i):
        return i, anyray.get_runtime_context().get_node_id()

    on_head = NodeAffinitySchedulingStrategy(HEAD, soft=True)
    phoenix = Where.options(name="phoenix", lifetime="detached", max_restarts=1,
                            scheduling_strategy=on_head).remote()
    assert anyray.get(phoenix.node.remote(), timeout=60) == (HEAD, False)
    mortal = Where.options(scheduling_strategy=on_head).remote()
    assert anyray.get(mortal.node.remote(), timeout=60)[0] == HEAD
    print("ready", flush=True)
    sys.stdin.readline()  # the test kills the head now

    assert sorted(anyray.get([where.remote(i) for i in range(20)], timeout=60)) == [(i, OTHER) for i in range(20)]
    again = anyray.get_actor("phoenix")
    assert anyray.get(again.node.remote(), timeout=60) == (OTHER, True)
    try:
        anyray.get(mortal.node.remote(), timeout=60)
        raise AssertionError("an actor of the dead head answered")
    except anyray.exceptions.ActorDiedError:
        pass
    fresh = Where.remote()
    assert anyray.get(fresh.node.remote(), timeout=60) == (OTHER, False)
    pg = placement_group([{{"CPU": 1}}])
    assert pg.wait(60)
    in_pg = where.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg)).remote(0)
    assert anyray.get(in_pg, timeout=60) == (0, OTHER)
    print("done", flush=True)
"""


def survive_the_head(env, metadata_url: str) -> None:
    head = start_head(env, "--metadata", metadata_url, "--num-cpus", "2")
    cli(env, "start", "--address", head["address"], "--num-cpus", "2")
    other = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    wait_until(lambda: len(status_nodes(env)) == 2, "both nodes")
    body = SURVIVE.format(address=other["address"], head=head["node_id"], other=other["node_id"])
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], env=env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = run.stdout.readline()
        assert line.strip() == "ready", line + run.stderr.read()
        os.kill(head["pid"], signal.SIGKILL)  # the head daemon; its workers follow it
        wait_until(lambda: status_nodes(env) == [other["node_id"]], "the head's lease to lapse")
        run.stdin.write("\n")
        run.stdin.flush()
        out, err = run.communicate(timeout=WAIT * 3)
        assert run.returncode == 0, err
        assert out.strip() == "done"
        # a driver that comes after the head's death finds the cluster through the survivor or the store
        for address in (other["address"], metadata_url):
            late = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
                import anyray
                anyray.init(address={address!r})
                print(anyray.get(anyray.remote(lambda: 7).remote(), timeout=60), len(anyray.nodes()))
            """)], env=env, capture_output=True, text=True, timeout=WAIT)
            assert late.returncode == 0, late.stderr
            assert late.stdout.split()[0] == "7"
        # a node takes the dead head's place by joining through the store (a second head would split the cluster)
        cli(env, "start", "--address", metadata_url, "--num-cpus", "1")
        wait_until(lambda: len(status_nodes(env)) == 2, "the new node to join")
    finally:
        if run.poll() is None:
            run.kill()


def test_the_cluster_goes_on_without_its_head_with_redis_elsewhere(cluster_env, tmp_path):
    server = RedisServer.start(str(tmp_path))
    try:
        survive_the_head(cluster_env, server.url)
    finally:
        server.stop()


def test_the_cluster_goes_on_without_its_head_or_an_etcd_member(cluster_env, tmp_path):
    cluster = EtcdCluster(str(tmp_path))
    try:
        survive_the_head(cluster_env, cluster.url)
        cluster.members[0].proc.kill()  # then one etcd member dies: the survivor serves on
        late = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            import anyray
            anyray.init(address={cluster.url!r})
            print(sum(anyray.get([anyray.remote(lambda i: i).remote(i) for i in range(50)], timeout=60)))
        """)], env=cluster_env, capture_output=True, text=True, timeout=WAIT)
        assert late.returncode == 0, late.stderr
        assert late.stdout.strip() == str(sum(range(50)))
    finally:
        cluster.stop()


def test_a_driver_connected_to_the_dead_head_gets_a_clear_error_and_can_connect_to_a_survivor(cluster_env, tmp_path):
    """Ray's driver dies with its raylet; anyray's stays alive: its calls fail with ConnectionError naming the
    node, and it may init again with another node (or the metadata store) as its address."""
    server = RedisServer.start(str(tmp_path))
    try:
        head = start_head(cluster_env, "--metadata", server.url, "--num-cpus", "1")
        cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1")
        other = next(r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
        body = f"""
            import sys, anyray
            anyray.init(address={head['address']!r})
            assert anyray.get(anyray.remote(lambda: 1).remote(), timeout=60) == 1
            print("ready", flush=True)
            sys.stdin.readline()  # the test kills the head now
            try:
                anyray.get(anyray.remote(lambda: 2).remote(), timeout=60)
                raise AssertionError("a call through a dead node answered")
            except ConnectionError as exc:
                assert {head['address']!r} in str(exc) and "died" in str(exc), exc
            anyray.shutdown()
            anyray.init(address={server.url!r})
            print(anyray.get(anyray.remote(lambda: 3).remote(), timeout=60), flush=True)
        """
        run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], env=cluster_env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = run.stdout.readline()
            assert line.strip() == "ready", line + run.stderr.read()
            os.kill(head["pid"], signal.SIGKILL)
            wait_until(lambda: status_nodes(cluster_env) == [other["node_id"]], "the head's lease to lapse")
            run.stdin.write("\n")
            run.stdin.flush()
            out, err = run.communicate(timeout=WAIT * 2)
            assert run.returncode == 0, err
            assert out.split()[-1] == "3"
        finally:
            if run.poll() is None:
                run.kill()
    finally:
        server.stop()


def test_a_head_for_a_store_a_running_cluster_uses_is_refused(cluster_env, tmp_path):
    server = RedisServer.start(str(tmp_path))
    try:
        start_head(cluster_env, "--metadata", server.url, "--num-cpus", "1")
        elsewhere = {**cluster_env, "ANYRAY_CLUSTER_DIR": str(tmp_path / "elsewhere")}  # another machine's
        second = cli(elsewhere, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                     "--metadata", server.url, check=False)
        assert second.returncode != 0
        assert "already holds a running cluster" in second.stdout + second.stderr
        assert server.password not in second.stdout + second.stderr
        assert len(status_nodes(cluster_env)) == 1
    finally:
        server.stop()
