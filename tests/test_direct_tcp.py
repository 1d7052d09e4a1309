"""Direct calls over TCP (adapters/cluster/direct.py, node/worker_direct.py): a driver that cannot map its
node's shared memory (one on another machine) leases workers and calls sync actors straight over TCP, and
a driver calls an actor on another node straight at its process, not through the two nodes.

A driver started with ``ANYRAY_MAP_NODE_MEMORY=0`` maps no node's memory, as one on another machine: the
node treats it so (its objects travel in its connection), and these tests run that path on one machine.
"""

from __future__ import annotations

import json
import textwrap

import pytest
from test_cluster import driver, start_head, two_nodes


@pytest.fixture(autouse=True)
def _direct_calls_on(monkeypatch):
    monkeypatch.delenv("ANYRAY_DIRECT_CALLS", raising=False)
    monkeypatch.delenv("ANYRAY_TASK_LEASES", raising=False)


COMMON = """
    import json, os, signal, time
    import anyray
    from anyray import exceptions
    from anyray.current import current_runtime

    direct = current_runtime().backend.scheduler.direct

    @anyray.remote
    class Counter:
        def __init__(self):
            self.seen = []

        def add(self, value):
            self.seen.append(value)
            return list(self.seen)

        def mark(self, value, _payload):
            self.seen.append(value)

        def pid(self):
            return os.getpid()

        def spin_until_cancelled(self):
            while not anyray.get_runtime_context().is_canceled():
                time.sleep(0.01)
            return "not cancelled"

        def sleep(self, seconds):
            time.sleep(seconds)

        def big(self, n):
            return b"x" * n

    def socket_of(actor):
        # calls the actor until its calls go straight to its process: that socket
        for _ in range(600):
            anyray.get(actor.pid.remote())
            sock = direct._sockets.get(actor._actor_id)
            if sock is not None:
                return sock
            time.sleep(0.05)
        raise AssertionError("the actor's calls never went straight to its process")
"""


def run(env, body: str) -> dict:
    result = driver(env, textwrap.dedent(COMMON) + textwrap.dedent(body))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


LEASES_AND_ACTOR = """
    @anyray.remote
    def double(x):
        return 2 * x

    actor = Counter.remote()
    sock = socket_of(actor)
    adds = [actor.add.remote(i) for i in range(20)]
    straight = all(ref._id in direct.waiting for ref in adds)
    seen = anyray.get(adds[-1], timeout=60)
    big = len(anyray.get(actor.big.remote(2_000_000), timeout=60))  # put to the node, read there
    leased = []
    for i in range(200):
        ref = double.remote(i)
        if ref._id in direct.waiting:  # on a worker the driver leased
            leased.append(i)
        assert anyray.get(ref, timeout=60) == 2 * i
    paths = [s.path for socks in direct.leases._held.values() for s in socks]
    print(json.dumps({"actor": sock.path, "straight": straight, "seen": seen, "big": big,
                      "leased": len(leased), "leases": paths}))
"""


def test_a_driver_that_maps_no_node_memory_leases_workers_and_calls_actors_over_tcp(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    remote = run(dict(cluster_env, ANYRAY_MAP_NODE_MEMORY="0"), LEASES_AND_ACTOR)
    assert remote["actor"].startswith("tcp://127.0.0.1:") and remote["straight"]
    assert remote["seen"] == list(range(20)) and remote["big"] == 2_000_000
    assert remote["leased"] > 150 and remote["leases"] and all(p.startswith("tcp://") for p in remote["leases"])
    here = run(cluster_env, LEASES_AND_ACTOR)  # a driver on the node's machine: its Unix sockets
    assert here["actor"].startswith("/") and here["leased"] > 150
    assert not any(p.startswith("tcp://") for p in here["leases"])


def test_an_actor_on_another_node_takes_its_calls_straight_over_tcp(cluster_env):
    head, other = two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1", "--resources", '{"there": 1}'))
    found = run(cluster_env, """
        there = Counter.options(resources={"there": 0.5}, max_restarts=1).remote()
        sock = socket_of(there)
        calls = [there.add.remote(1), there.add.remote(anyray.put(2)), there.add.remote(3)]
        order = anyray.get(calls[-1], timeout=60)
        socket_of(there)  # straight again once the node has done the call it took
        running = there.spin_until_cancelled.remote()
        went = running._id in direct.waiting
        time.sleep(0.3)
        anyray.cancel(running)
        try:
            anyray.get(running, timeout=60)
            cancelled = False
        except exceptions.TaskCancelledError:
            cancelled = True
        pid = anyray.get(there.pid.remote())
        sleeping = there.sleep.remote(60)
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        try:
            anyray.get(sleeping, timeout=60)
            died = False
        except exceptions.ActorDiedError:
            died = True
        for _ in range(600):  # its node starts it again; calls reach the new process
            try:
                new_pid = anyray.get(there.pid.remote(), timeout=60)
                break
            except exceptions.ActorDiedError:
                time.sleep(0.1)
        again = socket_of(there)
        print(json.dumps({"path": sock.path, "order": order, "went": went, "cancelled": cancelled,
                          "died": died, "restarted": new_pid != pid, "again": again.pid == new_pid,
                          "node": anyray.get(there.add.remote("last"))[-1]}))
    """)
    assert found["path"].startswith("tcp://127.0.0.1:")
    assert found["order"][-3:] == [1, 2, 3]  # a call through the nodes between direct ones keeps its place
    assert found["went"] and found["cancelled"]
    assert found["died"] and found["restarted"] and found["again"] and found["node"] == "last"
    assert other["node_id"] != head["node_id"]


def test_a_call_through_the_node_goes_behind_direct_calls_still_on_their_way(cluster_env):
    # Over TCP a call written is not yet at the actor: while it runs a long call, calls pile up in the
    # network's buffers; one that then goes through the node must not overtake them.
    start_head(cluster_env, "--num-cpus", "1")
    found = run(dict(cluster_env, ANYRAY_MAP_NODE_MEMORY="0"), """
        actor = Counter.remote()
        socket_of(actor)
        asleep = actor.sleep.remote(3)
        payload = "x" * 30_000
        for i in range(1000):  # 30 MB: more than buffers hold
            actor.mark.remote(i, payload)
        through = actor.add.remote(anyray.put("through the node"))  # a ref argument: the node's path
        seen = anyray.get(through, timeout=120)
        print(json.dumps({"seen": seen}))
    """)
    assert found["seen"] == list(range(1000)) + ["through the node"]


def test_a_node_with_tls_takes_no_direct_calls_over_tcp(cluster_env):
    start_head(cluster_env, "--num-cpus", "1", "--tls")
    found = run(dict(cluster_env, ANYRAY_MAP_NODE_MEMORY="0"), """
        actor = Counter.remote()
        for i in range(40):
            assert anyray.get(actor.add.remote(i), timeout=60)[-1] == i
            time.sleep(0.02)
        print(json.dumps({"sockets": [s.path for s in direct._sockets.values()]}))
    """)
    assert found["sockets"] == []  # calls in clear over the network: never; they take the node's TLS

