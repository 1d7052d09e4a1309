"""`anyray list` and ``anyray.util.state`` on a cluster read the same rows (the StatePort): Ray's field
names, every node's actors and workers, the driver listed as a DRIVER worker, the table's columns."""

from __future__ import annotations

import json
import os

from test_cluster import WAIT
from test_cluster import cli as run_cli

import anyray
from anyray.util import state


def cli(env, *args) -> str:
    return run_cli(env, *args).stdout


@anyray.remote
class Keeper:
    def pid(self):
        return os.getpid()


def test_anyray_list_and_the_state_api_show_the_same_actors_and_workers(cluster_env):
    cli(cluster_env, "start", "--head", "--port", "0", "--ray-client-server-port", "0", "--num-cpus", "2")
    anyray.init(backend="cluster", address="auto")
    keeper = Keeper.options(name="keeper").remote()
    pid = anyray.get(keeper.pid.remote(), timeout=WAIT)

    listed = [r for r in json.loads(cli(cluster_env, "list", "actors", "--format", "json")) if r["name"] == "keeper"]
    assert [(r["class_name"], r["state"], r["pid"], r["num_restarts"]) for r in listed] == [("Keeper", "ALIVE", pid, 0)]
    assert [(a.actor_id, a.pid) for a in state.list_actors(filters=[("name", "=", "keeper")])] == \
        [(listed[0]["actor_id"], pid)]

    workers = json.loads(cli(cluster_env, "list", "workers", "--format", "json"))
    assert os.getpid() in {w["pid"] for w in workers if w["worker_type"] == "DRIVER"}
    assert pid in {w["pid"] for w in workers if w["worker_type"] == "WORKER"}
    assert {w.pid for w in state.list_workers(limit=1000)} >= {os.getpid(), pid}

    table = cli(cluster_env, "list", "actors").splitlines()
    assert table[0].split() == ["ACTOR_ID", "CLASS_NAME", "STATE", "NAME", "PID", "NUM_RESTARTS", "NODE_ID"]
