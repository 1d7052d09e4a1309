"""Direct actor calls on the cluster (adapters/cluster/direct.py): a driver on the actor's machine sends
a sync actor's calls straight to the actor's process. What a user can observe: the same results, order,
errors and cancels as through the node; a value returned directly is readable by work on another node;
the actor's socket refuses a client without the cluster's key."""

from __future__ import annotations

import os
import signal
import textwrap
import time
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge

import pytest
from test_cluster import WAIT, driver, start_head, two_nodes

import anyray
from anyray import exceptions
from anyray.adapters.cluster.direct_host import direct_key
from anyray.current import current_runtime


@pytest.fixture(autouse=True, scope="module")
def _direct_calls_on():
    """Direct calls are on unless ANYRAY_DIRECT_CALLS=0 (adapters/cluster/direct.py, SWITCH): these tests
    run with them on whatever the environment says."""
    before = os.environ.pop("ANYRAY_DIRECT_CALLS", None)
    yield
    if before is not None:
        os.environ["ANYRAY_DIRECT_CALLS"] = before


@pytest.fixture(scope="module")
def private_cluster(_direct_calls_on):
    anyray.init(backend="cluster", num_cpus=2)
    yield current_runtime().backend
    anyray.shutdown()


@anyray.remote
def pause(seconds):
    time.sleep(seconds)


@anyray.remote
class Counter:
    def __init__(self):
        self.seen = []

    def add(self, value):
        self.seen.append(value)
        return list(self.seen)

    def pid(self):
        return os.getpid()

    def add_after_a_task(self, value):
        anyray.get(pause.remote(0.5))  # the process reads its node's connection meanwhile
        return self.add(value)

    def sleep(self, seconds):
        time.sleep(seconds)
        return "slept"

    def spin_until_cancelled(self):
        while not anyray.get_runtime_context().is_canceled():
            time.sleep(0.01)
        return "not cancelled"

    def big(self, n):
        return b"x" * n


def direct_socket(backend, actor):
    """Calls the actor until its calls go straight to its process; that socket."""
    direct = backend.scheduler.direct
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        anyray.get(actor.pid.remote())
        sock = direct._sockets.get(actor._actor_id)
        if sock is not None:
            return sock
        time.sleep(0.02)
    raise AssertionError("the actor's calls never went straight to its process")


def test_direct_calls_keep_their_order_with_calls_that_go_through_the_node(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    ref_arg = anyray.put("through the node")  # a call with a reference in it goes through the node
    refs = [actor.add.remote(1), actor.add.remote(2), actor.add.remote(ref_arg), actor.add.remote(4),
            actor.add.remote(5)]
    assert anyray.get(refs[-1], timeout=WAIT) == [1, 2, "through the node", 4, 5]
    assert anyray.get(refs[0]) == [1]


def test_a_node_path_call_read_while_a_direct_call_waits_in_get_goes_behind_the_direct_calls(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    first = actor.add_after_a_task.remote("first")
    time.sleep(0.2)  # it runs: the next call waits in the process's socket
    second = actor.add.remote("second")
    third = actor.add.remote(anyray.put("third"))
    assert first._id in private_cluster.scheduler.direct.waiting
    assert anyray.get(third, timeout=WAIT) == ["first", "second", "third"]
    assert anyray.get(second) == ["first", "second"]


def test_a_large_result_and_one_passed_on_are_read_as_through_the_node(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    assert len(anyray.get(actor.big.remote(5 << 20), timeout=WAIT)) == 5 << 20  # put to the node's store

    @anyray.remote
    def length(value):
        return len(value)

    pending = actor.sleep.remote(0.3)  # passed on before it came back
    assert anyray.get(length.remote(pending), timeout=WAIT) == len("slept")
    came = actor.big.remote(10)
    assert anyray.get(came) == b"x" * 10
    assert anyray.get(length.remote(came), timeout=WAIT) == 10  # passed on after it came back
    inside = anyray.get(anyray.put([actor.big.remote(3)]))[0]  # a reference inside a put
    assert anyray.get(inside, timeout=WAIT) == b"xxx"


def test_a_killed_actor_process_fails_the_call_it_ran_and_the_actor_restarts(private_cluster):
    actor = Counter.options(max_restarts=1).remote()
    sock = direct_socket(private_cluster, actor)
    pid = anyray.get(actor.pid.remote())
    assert pid == sock.pid
    running = actor.sleep.remote(30)
    assert running._id in private_cluster.scheduler.direct.waiting  # sent straight to the process
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(running, timeout=WAIT)
    deadline = time.monotonic() + WAIT  # the node restarts it; calls reach the new process
    while True:
        try:
            new_pid = anyray.get(actor.pid.remote(), timeout=WAIT)
            break
        except exceptions.ActorDiedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert new_pid != pid
    assert direct_socket(private_cluster, actor).pid == new_pid


def test_a_killed_actor_that_does_not_restart_fails_every_later_call(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    pid = anyray.get(actor.pid.remote())
    running = actor.sleep.remote(30)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(running, timeout=WAIT)
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(actor.pid.remote(), timeout=WAIT)


def test_kill_then_call_fails_the_call(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    anyray.kill(actor)
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(actor.add.remote(1), timeout=WAIT)


def test_a_direct_call_is_cancelled_running_or_queued(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    running = actor.spin_until_cancelled.remote()
    queued = actor.add.remote("queued")
    assert running._id in private_cluster.scheduler.direct.waiting
    ready, _ = anyray.wait([running], timeout=0.3)
    assert not ready
    anyray.cancel(queued)
    anyray.cancel(running)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(running, timeout=WAIT)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(queued, timeout=WAIT)
    assert anyray.get(actor.add.remote("after"), timeout=WAIT) == ["after"]


def test_the_actor_s_socket_refuses_a_client_without_the_cluster_s_key(private_cluster):
    import socket

    actor = Counter.remote()
    sock = direct_socket(private_cluster, actor)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(sock.path)
    conn = Connection(raw.detach())
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        answer_challenge(conn, direct_key(b"not the cluster token", os.path.dirname(sock.path)))
        deliver_challenge(conn, b"whatever")
    conn.close()
    assert anyray.get(actor.add.remote("still serving"), timeout=WAIT) == ["still serving"]


def test_a_value_returned_directly_is_read_by_a_task_on_another_node(cluster_env):
    head, other = two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1"))
    result = driver(cluster_env, textwrap.dedent(f"""
        import time
        from anyray.current import current_runtime
        from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        @anyray.remote(num_cpus=0)
        class Source:
            def value(self, i):
                return {{"i": i}}

        @anyray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy({other["node_id"]!r}, soft=False))
        def read(value):
            return value["i"], anyray.get_runtime_context().get_node_id()

        source = Source.remote()
        direct = current_runtime().backend.scheduler.direct
        for i in range(400):
            ref = source.value.remote(i)
            if i > 5 and ref._id in direct.waiting:
                break
            anyray.get(ref)
            time.sleep(0.01)
        assert ref._id in direct.waiting, "never direct"
        anyray.get(ref)
        print(anyray.get(read.remote(ref), timeout=60))
    """))
    assert result.returncode == 0, result.stderr
    i, node = eval(result.stdout.strip().splitlines()[-1])
    assert i > 5 and node == other["node_id"]


def test_direct_calls_are_on_by_default_and_off_with_the_switch_at_zero(cluster_env):
    start_head(cluster_env, "--num-cpus", "1")
    body = """
        import time
        from anyray.current import current_runtime

        @anyray.remote(num_cpus=0)
        class Echo:
            def echo(self, i):
                return i

        echo = Echo.remote()
        direct = current_runtime().backend.scheduler.direct
        went = False
        for i in range(100):
            ref = echo.echo.remote(i)
            went = went or ref._id in direct.waiting
            assert anyray.get(ref) == i
            time.sleep(0.01)
        print("direct" if went else "through the node")
    """
    on = driver(cluster_env, body)  # the environment has no ANYRAY_DIRECT_CALLS (the module's fixture)
    assert on.returncode == 0, on.stderr
    assert on.stdout.strip().splitlines()[-1] == "direct"
    off = driver(dict(cluster_env, ANYRAY_DIRECT_CALLS="0"), body)
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip().splitlines()[-1] == "through the node"


def test_many_calls_whose_answers_nobody_reads_yet_do_not_stop_a_call_behind_them(private_cluster):
    actor = Counter.remote()
    direct_socket(private_cluster, actor)
    refs = [actor.big.remote(50_000) for _ in range(300)]  # 15 MB of answers, more than a socket holds
    last = actor.add.remote(anyray.put("through the node"))  # the driver waits for its node for this one
    assert anyray.get(last, timeout=WAIT) == ["through the node"]
    assert all(len(value) == 50_000 for value in anyray.get(refs, timeout=WAIT))



def _wait_loop(refs) -> list:
    """``wait(num_returns=1)`` in a loop on the list it hands back (a ready index after the first call)."""
    got, not_ready = [], refs
    while not_ready:
        ready, not_ready = anyray.wait(not_ready, num_returns=1, timeout=WAIT)
        assert ready, "a wait loop's next call found nothing ready (the node was asked about direct results)"
        got.extend(anyray.get(ready))
    return got


def test_a_wait_loop_over_direct_calls_results_gets_each_of_them(private_cluster):
    # util.multiprocessing.Pool collects its batches this way: the loop's ready index was the node's,
    # which never hears of a direct call's result, and the Pool hung.
    first, second = Counter.remote(), Counter.remote()
    direct_socket(private_cluster, first)
    direct_socket(private_cluster, second)
    refs = [first.sleep.remote(0.2), second.add.remote("a"), first.add.remote("b"), second.add.remote("c")]
    assert all(ref._id in private_cluster.scheduler.direct.waiting for ref in refs)
    assert sorted(map(str, _wait_loop(refs))) == sorted(["slept", "['a']", "['b']", "['a', 'c']"])
    came = [first.add.remote(i) for i in range(3)]  # results that came before the loop, mixed with a task's
    anyray.get(came)
    mixed = came + [pause.remote(0.2), second.sleep.remote(0.3)]
    assert len(_wait_loop(mixed)) == 5
