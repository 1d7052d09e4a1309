"""The cluster backend against real node daemons on loopback: the CLI, the token, leases, metadata restarts.

Every test runs its own cluster in a private cluster directory
(``ANYRAY_CLUSTER_DIR``), started with the ``anyray`` command and stopped by
pid; drivers run in subprocesses where a test kills or restarts something.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import CLUSTER_HEARTBEAT
from servers import EtcdServer, RedisServer

import anyray
from anyray.adapters.cluster import files
from anyray.adapters.cluster.client import open_connection

ANYRAY = [sys.executable, "-m", "anyray.cli"]
HEARTBEAT = CLUSTER_HEARTBEAT
WAIT = 60.0  # generous: a busy 2-core machine


def cli(env, *args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([*ANYRAY, *args], env=env, capture_output=True, text=True, timeout=WAIT)
    if check and result.returncode != 0:
        raise AssertionError(f"anyray {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def start_head(env, *args) -> dict:
    # --ray-client-server-port 0: leave Ray Client's port (10001) to the test of Ray's own commands
    cli(env, "start", "--head", "--port", "0", "--ray-client-server-port", "0", *args)
    return next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if r["head"])


def status_nodes(env) -> list[str]:
    out = cli(env, "list", "nodes", "--format", "json").stdout
    return sorted(n["node_id"] for n in json.loads(out))


def wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def driver(env, body: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
    code = "import anyray\nanyray.init(backend='cluster', address='auto')\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)


# -- security ------------------------------------------------------------------------


def test_the_token_is_private_and_never_shown(cluster_env):
    head = start_head(cluster_env)
    directory = cluster_env["ANYRAY_CLUSTER_DIR"]
    token_path = os.path.join(directory, "token")
    assert os.stat(token_path).st_mode & 0o777 == 0o600
    assert os.stat(directory).st_mode & 0o777 == 0o700
    token = open(token_path).read().strip()
    shown = [cli(cluster_env, "status").stdout, cli(cluster_env, "list", "nodes").stdout]
    run = driver(cluster_env, "print(anyray.get(anyray.put(1)))")
    assert run.returncode == 0, run.stderr
    shown += [run.stdout, run.stderr]
    for name in os.listdir(os.path.join(directory, "logs")):
        shown.append(open(os.path.join(directory, "logs", name)).read())
    daemon = psutil.Process(head["pid"])
    shown += [" ".join(daemon.cmdline()), json.dumps(daemon.environ())]
    for child in daemon.children(recursive=True):  # the fork server, workers, the private Redis
        shown += [" ".join(child.cmdline()), json.dumps(child.environ())]
    for text in shown:
        assert token not in text


def test_connections_without_the_token_or_with_a_wrong_one_are_refused_and_the_node_keeps_serving(cluster_env):
    head = start_head(cluster_env)
    host, port = head["address"].rsplit(":", 1)
    # A raw connection that knows nothing of the protocol: dropped.
    with socket.create_connection((host, int(port)), timeout=WAIT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        sock.settimeout(WAIT)
        received = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:  # closed with our bytes unread
                break
            if not chunk:
                break
            received += chunk
        assert b"HTTP" not in received
    # A connection with the wrong token: refused.
    with pytest.raises(PermissionError, match="refused the cluster token"):
        open_connection(head["address"], b"0" * 64)
    # The node still serves a driver that holds the token.
    run = driver(cluster_env, "print(anyray.get(anyray.remote(lambda: 'served').remote()))")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "served"
    log = open(head_log(cluster_env, head)).read()
    assert "refused a connection" in log


def head_log(env, record) -> str:
    return os.path.join(env["ANYRAY_CLUSTER_DIR"], "logs", f"node-{record['pid']}.log")


def test_a_token_file_others_can_read_is_rejected(cluster_env, tmp_path):
    head = start_head(cluster_env)
    loose = tmp_path / "token"
    loose.write_text(open(os.path.join(cluster_env["ANYRAY_CLUSTER_DIR"], "token")).read())
    loose.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        anyray.init(backend="cluster", address=head["address"], token_file=str(loose))
    assert not anyray.is_initialized()


def test_address_auto_without_a_cluster_says_how_to_start_one(cluster_env):
    with pytest.raises(ConnectionError, match=r"anyray start --head"):
        anyray.init(backend="cluster", address="auto")
    assert not anyray.is_initialized()


# -- the CLI and the node's life ---------------------------------------------------------------


def test_status_shows_the_nodes_their_resources_and_the_lease(cluster_env):
    start_head(cluster_env, "--num-cpus", "3", "--resources", '{"Gadget": 2}')
    out = cli(cluster_env, "status").stdout
    assert "Nodes: 1 alive" in out
    assert "CPU: 0/3" in out and "Gadget: 0/2" in out
    assert f"lease of {3 * HEARTBEAT:g} s" in out


def test_a_driver_that_goes_leaves_nothing_on_the_node(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    run = driver(cluster_env, """
        import numpy as np
        @anyray.remote
        class Keeper:
            def hold(self, x):
                self.x = x
                return len(x)
        keeper = Keeper.remote()
        big = anyray.put(np.ones(1_000_000))
        assert anyray.get(keeper.hold.remote(big)) == 1_000_000
        refs = [anyray.put(i) for i in range(10)]
        print("ok")
    """)
    assert run.returncode == 0, run.stderr
    wait_until(lambda: not json.loads(cli(cluster_env, "list", "objects", "--format", "json").stdout),
               "the driver's objects to be freed")
    wait_until(lambda: all(a["state"] == "DEAD" for a in
                           json.loads(cli(cluster_env, "list", "actors", "--format", "json").stdout)),
               "the driver's actor to end")


def test_stop_ends_every_daemon_and_what_they_started(cluster_env):
    head = start_head(cluster_env)
    cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1")
    records = files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"])
    assert len(records) == 2
    procs = []
    for record in records:
        daemon = psutil.Process(record["pid"])
        procs += [daemon, *daemon.children(recursive=True)]
    assert any("redis-server" in " ".join(p.cmdline()) for p in procs)
    run = driver(cluster_env, "print(anyray.get(anyray.remote(lambda: 1).remote()))")  # workers exist too
    assert run.returncode == 0, run.stderr
    out = cli(cluster_env, "stop").stdout
    assert out.count("Stopped the anyray node") == 2
    gone, alive = psutil.wait_procs(procs, timeout=WAIT)
    assert not alive, alive
    assert not files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"])
    assert "No anyray node runs" in cli(cluster_env, "stop").stdout


def test_a_second_head_on_the_same_machine_is_refused(cluster_env):
    head = start_head(cluster_env)
    result = cli(cluster_env, "start", "--head", "--port", "0", check=False)
    assert result.returncode == 1
    assert f"already running on this machine (head at {head['address']})" in result.stderr


# -- failures ----------------------------------------------------------------------------


def test_a_killed_node_lapses_within_its_lease(cluster_env):
    head = start_head(cluster_env)
    cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1")
    other = next(r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    assert len(status_nodes(cluster_env)) == 2
    os.kill(other["pid"], signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: status_nodes(cluster_env) == [head["node_id"]], "the killed node's lease to lapse")
    lapsed = time.monotonic() - killed
    # Bounded by the lease (three heartbeats) plus the store's expiry sweep and this poll; generous for CI.
    assert lapsed < 3 * HEARTBEAT + 10, lapsed
    out = wait_until(lambda: (lambda text: "Dead nodes" in text and text)(cli(cluster_env, "status").stdout),
                     "status to list the dead node")
    assert "Dead nodes (listed for an hour): 1" in out
    assert f"{other['node_id']}" in out and "its lease lapsed" in out


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_nodes_register_again_after_the_metadata_server_restarts(cluster_env, tmp_path, kind):
    if kind == "redis":
        server = RedisServer.start(str(tmp_path))
        restart = lambda: RedisServer.start(str(tmp_path), port=server.port, password=server.password)  # noqa: E731
    else:
        server = EtcdServer.start(str(tmp_path))
        restart = lambda: EtcdServer.start(str(tmp_path), port=server.port)  # noqa: E731
    try:
        head = start_head(cluster_env, "--metadata", server.url, "--num-cpus", "2")
        cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1")
        assert len(status_nodes(cluster_env)) == 2
        body = """
            import time
            @anyray.remote
            def slow(i):
                time.sleep(0.05)
                return i
            print(sum(anyray.get([slow.remote(i) for i in range(200)])))
        """
        run = subprocess.Popen([sys.executable, "-c", "import anyray\nanyray.init(backend='cluster', address='auto')\n"
                                + textwrap.dedent(body)], env=cluster_env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        server.stop()  # gone, and with it every record: heartbeats wait and retry with backoff
        time.sleep(1.0)
        server = restart()
        out, err = run.communicate(timeout=WAIT)
        assert run.returncode == 0, err
        assert out.strip() == str(sum(range(200)))
        # Redis comes back empty, etcd with what it had: either way the nodes' records are current again.
        wait_until(lambda: len(status_nodes(cluster_env)) == 2, "both nodes to register again")
    finally:
        server.stop()


def two_nodes(env, head_args=(), other_args=()) -> tuple[dict, dict]:
    head = start_head(env, *head_args)
    cli(env, "start", "--address", head["address"], *other_args)
    other = next(r for r in files.local_nodes(env["ANYRAY_CLUSTER_DIR"]) if not r["head"])
    wait_until(lambda: len(status_nodes(env)) == 2, "both nodes")
    return head, other


def kill_node(record) -> None:
    """SIGKILL a node daemon; its fork server and workers follow it (they watch their parent)."""
    os.kill(record["pid"], signal.SIGKILL)


def test_a_killed_node_s_tasks_run_again_elsewhere(cluster_env, tmp_path):
    head, other = two_nodes(cluster_env, ("--num-cpus", "2"), ("--num-cpus", "2"))
    marks = tmp_path / "marks"
    marks.mkdir()
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, time, anyray
        from anyray.conformance.helpers import Arrivals, hold_until_all_arrive
        anyray.init(backend="cluster", address="auto")
        arrivals = Arrivals.remote()

        @anyray.remote(num_cpus=1, max_retries=2)
        def work(i, arrivals):
            node = anyray.get_runtime_context().get_node_id()
            first = not os.path.exists(os.path.join({str(marks)!r}, str(i)))
            if first:
                hold_until_all_arrive(arrivals, 4)  # all four run at once: two on each node
                open(os.path.join({str(marks)!r}, str(i)), "w").write(node)
                time.sleep(5)  # the test kills a node meanwhile
            return node

        print(sorted(anyray.get([work.remote(i, arrivals) for i in range(4)], timeout=120)))
    """)], env=cluster_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: len(os.listdir(marks)) == 4, "four tasks running")
    on_other = [m for m in os.listdir(marks) if (marks / m).read_text() == other["node_id"]]
    assert len(on_other) == 2  # the work spread over both nodes
    kill_node(other)
    out, err = run.communicate(timeout=WAIT * 2)
    assert run.returncode == 0, err
    assert out.strip() == str([head["node_id"]] * 4)  # the killed node's two ran again on the head


def test_a_killed_node_s_actors_restart_elsewhere_or_die_and_its_objects_are_lost(cluster_env):
    head, other = two_nodes(cluster_env, ("--num-cpus", "2", "--resources", '{"Slot": 1}'),
                            ("--num-cpus", "2", "--resources", '{"Slot": 2, "OnlyThere": 1}'))
    body = f"""
        import os, signal, time, sys
        import numpy as np
        import anyray
        from anyray.exceptions import ActorDiedError, ObjectLostError
        anyray.init(backend="cluster", address="auto")

        @anyray.remote
        class Where:
            def __init__(self):
                self.calls = 0
            def node(self):
                self.calls += 1
                return anyray.get_runtime_context().get_node_id(), self.calls, \\
                    anyray.get_runtime_context().was_current_actor_reconstructed

        filler = Where.options(resources={{"Slot": 1}}).remote()  # takes the head's one Slot
        assert anyray.get(filler.node.remote())[0] == {head["node_id"]!r}
        phoenix = Where.options(resources={{"Slot": 1}}, max_restarts=1).remote()
        mortal = Where.options(resources={{"Slot": 1}}).remote()
        assert anyray.get(phoenix.node.remote()) == ({other["node_id"]!r}, 1, False)
        assert anyray.get(mortal.node.remote())[0] == {other["node_id"]!r}

        @anyray.remote(resources={{"OnlyThere": 1}})
        def make():
            return [anyray.put(np.ones(200_000))]  # lives only on the other node
        inner = anyray.get(make.remote())[0]
        anyray.kill(filler)  # the head's Slot is free again: room for phoenix
        print("ready", flush=True)
        sys.stdin.readline()  # the test kills the other node now

        node, calls, restarted = anyray.get(phoenix.node.remote(), timeout=60)
        assert (node, calls, restarted) == ({head["node_id"]!r}, 1, True), (node, calls, restarted)
        try:
            anyray.get(mortal.node.remote(), timeout=60)
            raise AssertionError("a dead actor answered")
        except ActorDiedError as exc:
            assert "died" in str(exc), exc
        try:
            anyray.get(inner, timeout=60)
            raise AssertionError("a lost object was read")
        except ObjectLostError as exc:
            assert "lost" in str(exc), exc
        print("done", flush=True)
    """
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(body)], env=cluster_env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = run.stdout.readline()
    assert line.strip() == "ready", line + run.stderr.read()
    kill_node(other)
    wait_until(lambda: status_nodes(cluster_env) == [head["node_id"]], "the killed node's lease to lapse")
    run.stdin.write("\n")
    run.stdin.flush()
    out, err = run.communicate(timeout=WAIT * 2)
    assert run.returncode == 0, err
    assert out.strip() == "done"


def test_list_shows_the_actors_of_every_node(cluster_env):
    head, other = two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1", "--resources", '{"There": 1}'))
    run = driver(cluster_env, """
        @anyray.remote
        class Here:
            def ping(self):
                return 1
        a = Here.options(name="here", lifetime="detached").remote()
        b = Here.options(name="there", lifetime="detached", resources={"There": 1}).remote()
        anyray.get([a.ping.remote(), b.ping.remote()])
    """)
    assert run.returncode == 0, run.stderr
    rows = json.loads(cli(cluster_env, "list", "actors", "--format", "json").stdout)
    where = {row["name"]: row["node_id"] for row in rows if row["state"] == "ALIVE"}
    assert where == {"here": head["node_id"], "there": other["node_id"]}


def test_a_silent_node_fails_its_calls_and_stops_once_it_wakes_after_its_lease_lapsed(cluster_env):
    head, other = two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1", "--resources", '{"There": 1}'))
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time, anyray
        from anyray.exceptions import ActorDiedError
        anyray.init(backend="cluster", address="auto")

        @anyray.remote(resources={"There": 1})
        class Slow:
            def nap(self, seconds):
                time.sleep(seconds)
                return "woke"

        slow = Slow.remote()
        assert anyray.get(slow.nap.remote(0)) == "woke"
        ref = slow.nap.remote(300)
        print("calling", flush=True)
        try:
            anyray.get(ref, timeout=120)
        except ActorDiedError:
            print("died", flush=True)
    """)], env=cluster_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().strip() == "calling"
    os.kill(other["pid"], signal.SIGSTOP)  # silent: no EOF reaches anyone, only the lease tells
    try:
        out, err = run.communicate(timeout=WAIT)
        assert out.strip() == "died", err  # the call in flight fails once the lease lapses; it does not hang
    finally:
        os.kill(other["pid"], signal.SIGCONT)
    # Awake again, the node finds it was counted dead (its actors may run elsewhere by now): it stops.
    psutil.Process(other["pid"]).wait(WAIT)
    assert "lease lapsed" in open(head_log(cluster_env, other)).read()
    assert status_nodes(cluster_env) == [head["node_id"]]


def test_a_private_cluster_ends_with_its_driver_however_the_driver_ends(tmp_path):
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time, anyray
        anyray.init(backend="cluster", num_cpus=1)
        backend = anyray.runtime.current_runtime().backend
        print(backend._proc.pid, backend._private_dir, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid, directory = run.stdout.readline().split()
    daemon = psutil.Process(int(pid))
    procs = [daemon, *daemon.children(recursive=True)]  # its Redis, fork server, workers
    run.kill()  # SIGKILL: no shutdown(), no atexit
    run.wait()
    gone, alive = psutil.wait_procs(procs, timeout=WAIT)
    assert not alive, alive
    assert not os.path.exists(directory)


def test_objects_a_connected_driver_drops_are_freed_on_the_node(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, numpy as np, anyray
        anyray.init(backend="cluster", address="auto")
        big = anyray.put(np.ones(2_000_000))          # shared memory, read in place here
        view = anyray.get(big)
        small = anyray.put("small")
        made = anyray.remote(lambda: np.zeros(500_000)).remote()
        assert anyray.get(made).sum() == 0
        print("holding", flush=True)
        sys.stdin.readline()
        del big, view, small, made
        anyray.get(anyray.put(1))  # any later call carries the releases
        print("dropped", flush=True)
        sys.stdin.readline()
    """)], env=cluster_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def objects():
        return json.loads(cli(cluster_env, "list", "objects", "--format", "json").stdout)

    try:
        assert run.stdout.readline().strip() == "holding", run.stderr.read()
        assert sum(o["shared_memory"] for o in objects()) == 2
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.stdout.readline().strip() == "dropped"
        wait_until(lambda: not any(o["shared_memory"] for o in objects()), "the dropped objects to be freed")
        assert len(objects()) <= 1  # at most the last put(1), still referenced
    finally:
        run.kill()
        run.wait()


def test_objects_are_freed_on_every_node_once_no_node_refers_to_them(cluster_env):
    two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1", "--resources", '{"There": 1}'))
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, numpy as np, anyray
        anyray.init(backend="cluster", address="auto")

        @anyray.remote(resources={"There": 1})
        def make():
            return [anyray.put(np.ones(1_000_000))]  # lives on the other node; the driver gets a ref to it

        @anyray.remote(resources={"There": 1})
        def total(array):
            return float(array.sum())

        box = anyray.get(make.remote())
        here = anyray.put(np.ones(1_000_000))          # lives on the driver's node
        assert anyray.get(total.remote(here)) == 1e6   # read on the other node
        assert anyray.get(box[0]).sum() == 1e6         # read here from the other node
        print("holding", flush=True)
        sys.stdin.readline()
        del box, here
        anyray.get(anyray.put(1))
        print("dropped", flush=True)
        sys.stdin.readline()
    """)], env=cluster_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def large_objects():
        rows = json.loads(cli(cluster_env, "list", "objects", "--format", "json").stdout)
        return sorted(row["node_id"] for row in rows if row["shared_memory"])

    try:
        assert run.stdout.readline().strip() == "holding", run.stderr.read()
        assert len(set(large_objects())) == 2  # large objects on both nodes
        run.stdin.write("\n")
        run.stdin.flush()
        assert run.stdout.readline().strip() == "dropped"
        wait_until(lambda: not large_objects(), "every node to free the dropped objects")
    finally:
        run.kill()
        run.wait()


def test_ctrl_c_interrupts_a_driver_s_get_and_the_driver_goes_on(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import time, anyray
        anyray.init(backend="cluster", address="auto")
        slow = anyray.remote(lambda: time.sleep(60)).remote()
        print("waiting", flush=True)
        try:
            anyray.get(slow)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        anyray.cancel(slow)
        print(anyray.get(anyray.remote(lambda: "still works").remote(), timeout=60), flush=True)
    """)], env=cluster_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert run.stdout.readline().strip() == "waiting"
    time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=WAIT)
    assert run.returncode == 0, err
    assert out.split() == ["interrupted", "still", "works"]


def test_what_tasks_print_on_any_node_shows_on_the_driver(cluster_env):
    two_nodes(cluster_env, ("--num-cpus", "1"), ("--num-cpus", "1", "--resources", '{"There": 1}'))
    run = driver(cluster_env, """
        import os, sys

        @anyray.remote
        def here():
            print("printed here", os.getpid())
            return os.getpid()

        @anyray.remote(resources={"There": 1})
        def there():
            print("printed there", os.getpid(), file=sys.stderr)
            return os.getpid()

        print("pids", anyray.get(here.remote()), anyray.get(there.remote()), flush=True)
    """)
    assert run.returncode == 0, run.stderr
    pids = run.stdout.split("pids ")[1].split()
    assert f"(here pid={pids[0]}, ip=127.0.0.1) printed here {pids[0]}" in run.stdout
    assert f"(there pid={pids[1]}, ip=127.0.0.1) printed there {pids[1]}" in run.stderr
