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
