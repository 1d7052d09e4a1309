"""Nodes outlive an outage of a metadata store that keeps its data (Redis with an append-only file), longer than
their leases, as Ray's raylets outlive a GCS restart within ``gcs_rpc_server_reconnect_timeout_s``; a node that
was silent alone while the store stayed up is still declared dead and stops; an outage longer than that bound
still stops the nodes.

Real node daemons on loopback (``anyray start``), a real ``redis-server`` stopped and started again on the same
port and files, drivers in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from servers import EtcdServer, RedisServer, TcpProxy
from test_cluster import WAIT, cli, head_log, start_head, status_nodes, wait_until

from anyray.adapters.cluster import files

OUTAGE = 7.0  # seconds the store is away: well beyond a lease (three heartbeats of 0.25 s)

DRIVER = """
    import sys, anyray
    anyray.init(backend="cluster", address="auto")

    @anyray.remote
    class Keeper:
        def __init__(self):
            self.calls = 0
        def call(self):
            self.calls += 1
            return self.calls

    @anyray.remote(num_cpus=0)
    def where():
        return anyray.get_runtime_context().get_node_id()

    keeper = Keeper.options(name="keeper", resources={"There": 1}).remote()
    assert anyray.get(keeper.call.remote(), timeout=60) == 1
    print("ready", flush=True)
    sys.stdin.readline()  # the store is stopped and started again meanwhile
    again = anyray.get_actor("keeper")
    print("calls", anyray.get(again.call.remote(), timeout=60), flush=True)
    here = anyray.get(where.options(resources={"Here": 1}).remote(), timeout=60)
    there = anyray.get(where.options(resources={"There": 1}).remote(), timeout=60)
    print("nodes", here, there, flush=True)
"""


def two_nodes_on(env, url: str) -> tuple[dict, dict]:
    head = start_head(env, "--metadata", url, "--num-cpus", "1", "--resources", '{"Here": 1}')
    cli(env, "start", "--address", head["address"], "--num-cpus", "1", "--resources", '{"There": 2}')  # 1 for the actor
    other = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    wait_until(lambda: len(status_nodes(env)) == 2, "both nodes")
    return head, other


def alive(record) -> bool:
    try:
        return psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("outage", ["restart", "hang", "etcd-hang"])
def test_both_nodes_stay_through_a_store_outage_longer_than_a_lease(cluster_env, tmp_path, outage):
    """``restart``: Redis stopped and started again on its files; ``hang``: stopped (SIGSTOP) with every
    connection open, then woken: what expired meanwhile reaches every watcher as it wakes (``etcd-hang``: the
    same with etcd, whose leases expire as it wakes; a restarted etcd renews them, see test_cluster.py)."""
    if outage == "etcd-hang":
        server = EtcdServer.start(str(tmp_path))
    else:
        server = RedisServer.start(str(tmp_path), appendonly=True)
    try:
        head, other = two_nodes_on(cluster_env, server.url)
        run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(DRIVER)], env=cluster_env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert run.stdout.readline().strip() == "ready", run.stderr.read() if run.poll() is not None else ""
        if outage == "restart":
            server.stop()  # every lease runs out while it is away; its files keep the records (and their expiries)
            time.sleep(OUTAGE)
            server = RedisServer.start(str(tmp_path), port=server.port, password=server.password, appendonly=True)
        else:
            server.proc.send_signal(signal.SIGSTOP)
            time.sleep(OUTAGE)
            server.proc.send_signal(signal.SIGCONT)
        time.sleep(6.0)  # beyond a lease plus a backoff after the store is back: a node counted dead is gone by now
        assert alive(head) and alive(other)
        assert status_nodes(cluster_env) == sorted([head["node_id"], other["node_id"]])
        out, err = run.communicate("go\n", timeout=WAIT)
        assert run.returncode == 0, err
        lines = out.split("\n")
        assert "calls 2" in lines, out + err  # the same actor, its state kept: it was never restarted
        assert f"nodes {head['node_id']} {other['node_id']}" in lines, out + err
        log = open(head_log(cluster_env, other)).read()
        assert "this node stops" not in log, log
    finally:
        server.stop()


def test_a_node_silent_alone_beyond_its_lease_is_declared_dead_and_stops(cluster_env, tmp_path):
    server = RedisServer.start(str(tmp_path), appendonly=True)
    try:
        head, other = two_nodes_on(cluster_env, server.url)
        os.kill(other["pid"], signal.SIGSTOP)  # the store stays up: the head sees the lease lapse
        try:
            wait_until(lambda: status_nodes(cluster_env) == [head["node_id"]], "the silent node to be counted dead")
            time.sleep(1.0)
        finally:
            os.kill(other["pid"], signal.SIGCONT)
        wait_until(lambda: not alive(other), "the node to stop")  # awake, it finds its dead marker: it stops
        assert "this node stops" in open(head_log(cluster_env, other)).read()
        assert status_nodes(cluster_env) == [head["node_id"]]
        assert alive(head)
    finally:
        server.stop()


def test_a_node_cut_off_from_the_store_alone_finds_it_was_declared_dead_and_stops(cluster_env, tmp_path):
    """The node saw an outage (its connections to the store were cut) but the head did not: the head declared
    it dead while it could reach the store, so the node's own renewal is refused once it reaches the store."""
    server = RedisServer.start(str(tmp_path), appendonly=True)
    proxy = TcpProxy(server.port)
    try:
        head = start_head(cluster_env, "--metadata", server.url, "--num-cpus", "1")
        cli(cluster_env, "start", "--address", server.url.replace(f":{server.port}/", f":{proxy.port}/"),
            "--num-cpus", "1")
        other = next(r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
        wait_until(lambda: len(status_nodes(cluster_env)) == 2, "both nodes")
        proxy.cut()
        wait_until(lambda: status_nodes(cluster_env) == [head["node_id"]], "the cut-off node to be counted dead")
        time.sleep(1.0)
        proxy.mend()
        wait_until(lambda: not alive(other), "the node to stop")
        assert "the cluster declared it dead" in open(head_log(cluster_env, other)).read()
        assert status_nodes(cluster_env) == [head["node_id"]]
        assert alive(head)
    finally:
        proxy.close()
        server.stop()


def test_an_outage_beyond_the_reconnect_timeout_stops_the_nodes(cluster_env, tmp_path):
    cluster_env["RAY_gcs_rpc_server_reconnect_timeout_s"] = "2"
    server = RedisServer.start(str(tmp_path), appendonly=True)
    try:
        head, other = two_nodes_on(cluster_env, server.url)
        server.stop()
        for record in (head, other):
            wait_until(lambda record=record: not alive(record), "the nodes to stop")
        log = open(head_log(cluster_env, other)).read()
        assert "gcs_rpc_server_reconnect_timeout_s" in log, log
    finally:
        server.stop()


LONG_OUTAGE = 15.0  # seconds: longer than the store clients' own retries (about 10 s before calls waited it out)

WAITING_DRIVER = """
    import sys, time, anyray
    from anyray.util.placement_group import placement_group, remove_placement_group
    anyray.init(backend="cluster", address="auto")

    @anyray.remote(num_cpus=0)
    class Keeper:
        def ping(self):
            return "pong"

    keeper = Keeper.options(name="keeper").remote()
    assert anyray.get(keeper.ping.remote(), timeout=60) == "pong"
    group = placement_group([{"CPU": 1}])
    assert group.wait(60)
    print("ready", flush=True)
    sys.stdin.readline()  # the store is away from now on
    start = time.monotonic()
    try:
        remove_placement_group(group)
        print("removed", round(time.monotonic() - start), flush=True)
        again = anyray.get_actor("keeper")
        print("found", anyray.get(again.ping.remote(), timeout=60), flush=True)
    except Exception as exc:
        print("failed", round(time.monotonic() - start), type(exc).__name__, exc, flush=True)
"""


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_placement_group_removal_and_a_named_actor_lookup_wait_out_an_outage(cluster_env, tmp_path, kind):
    """Issued while the store is away for longer than its client's own retries, both succeed once it is back,
    as Ray's GCS clients wait for up to ``gcs_rpc_server_reconnect_timeout_s``."""
    server = EtcdServer.start(str(tmp_path)) if kind == "etcd" else RedisServer.start(str(tmp_path), appendonly=True)
    run = None
    try:
        head = start_head(cluster_env, "--metadata", server.url, "--num-cpus", "2")
        run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(WAITING_DRIVER)], env=cluster_env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert run.stdout.readline().strip() == "ready", run.stderr.read() if run.poll() is not None else ""
        server.stop()  # its files keep what it had
        run.stdin.write("go\n")
        run.stdin.flush()
        time.sleep(LONG_OUTAGE)
        if kind == "etcd":
            server = EtcdServer.start(str(tmp_path), port=server.port)
        else:
            server = RedisServer.start(str(tmp_path), port=server.port, password=server.password, appendonly=True)
        out, err = run.communicate(timeout=WAIT)
        lines = out.split("\n")
        removed = next((line for line in lines if line.startswith("removed ")), None)
        assert removed is not None, out + err
        assert int(removed.split()[1]) >= LONG_OUTAGE - 3, out  # it waited for the store, not failed and retried
        assert "found pong" in lines, out + err
        assert alive(head)
        assert "calls wait for it for up to 60 s" in open(head_log(cluster_env, head)).read()  # it said so
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        server.stop()


@pytest.mark.parametrize("kind,outage", [("redis", "stop"), ("etcd", "stop"), ("redis", "hang"), ("etcd", "hang")])
def test_a_store_call_past_the_reconnect_bound_fails_with_a_clear_error(tmp_path, monkeypatch, kind, outage):
    """``stop``: the server is gone (connections refused); ``hang``: it is stopped (SIGSTOP) with its
    connections open, so that commands go unanswered."""
    from anyray.adapters.metadata import open_metadata

    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "3")
    server = EtcdServer.start(str(tmp_path)) if kind == "etcd" else RedisServer.start(str(tmp_path))
    store = open_metadata(server.url, namespace="bound")
    try:
        store.put("groups/g1", b"record")
        if outage == "stop":
            server.stop()
        else:
            server.proc.send_signal(signal.SIGSTOP)
        for call in (lambda: store.compare_and_set("groups/g1", b"record", None), lambda: store.get("actor/ns/a")):
            start = time.monotonic()
            with pytest.raises(ConnectionError) as info:
                call()
            took = time.monotonic() - start
            assert 3.0 <= took < 3.0 + 12.0, took  # the bound, then an attempt at most (one unanswered: 5 s)
            said = str(info.value)
            name = "etcd" if kind == "etcd" else "Redis"
            assert f"The {name} metadata store at 127.0.0.1:{server.port}" in said, said
            assert "3 s" in said and "RAY_gcs_rpc_server_reconnect_timeout_s" in said, said
            assert getattr(server, "password", None) is None or server.password not in said, said
    finally:
        store.close()
        server.proc.send_signal(signal.SIGCONT)
        server.stop()


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_a_write_whose_answer_was_lost_is_not_applied_twice_in_effect(tmp_path, kind):
    """A compare-and-set (a placement group's state, a name's claim), a put-unless (a node's lease) and a delete
    applied by the server, whose answers were lost with the connection, are retried and report what was done
    (a blind retry would find its own write and report it not done)."""
    from anyray.adapters.metadata import open_metadata

    server = EtcdServer.start(str(tmp_path)) if kind == "etcd" else RedisServer.start(str(tmp_path))
    proxy = TcpProxy(server.port)
    store = open_metadata(server.url.replace(f":{server.port}", f":{proxy.port}"), namespace="lost")
    try:
        store.compare_and_set("warm", None, b"1")  # the server has each script (a first call loads it)
        store.put_unless("warm2", b"1", None, ["dead/warm"])
        store.delete("warm")
        store.put("groups/g1", b"PENDING")
        proxy.lose_next_answer()
        assert store.compare_and_set("groups/g1", b"PENDING", b"CREATED") is True
        assert store.get("groups/g1") == b"CREATED"
        proxy.lose_next_answer()
        assert store.compare_and_set("actor/ns/a", None, b"id") is True
        proxy.lose_next_answer()
        assert store.put_unless("nodes/n1", b"record", 5.0, ["dead/n1"]) is True
        assert store.get("nodes/n1") == b"record"
        proxy.lose_next_answer()
        assert store.delete("groups/g1") is True
        assert store.get("groups/g1") is None
        assert proxy.lost == 4
        assert store.compare_and_set("actor/ns/a", None, b"other") is False  # no lost answer: a plain refusal
    finally:
        store.close()
        proxy.close()
        server.stop()
