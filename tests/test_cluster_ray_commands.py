"""Ray's own cluster commands, run as Ray's documentation writes them, through ``anyray start`` and ``anyray run``.

Each test runs its clusters in private cluster directories (``ANYRAY_CLUSTER_DIR``): one per "machine", so a
joining node or a driver in another directory has no copy of the head's token file, as on another machine.
Every daemon started is killed by pid afterwards, with what it started.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from servers import RedisServer, free_port

import anyray
from anyray.adapters.cluster import files
from anyray.adapters.cluster.launch import kill_tree

ANYRAY = [sys.executable, "-m", "anyray.cli"]
WAIT = 90.0  # generous: a busy 2-core machine
PASSWORD = "P.4.redis"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Machines:
    """Cluster directories standing for machines; ``env(name)`` is the environment of a process there."""

    def __init__(self, root):
        self.root = root
        self.dirs: dict[str, str] = {}
        base = {k: v for k, v in os.environ.items()
                if k not in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS", "ANYRAY_CLUSTER_TOKEN",
                             "ANYRAY_REDIS_PASSWORD")}
        self.base = dict(base, ANYRAY_HEARTBEAT_SECONDS="0.25")

    def env(self, name: str, **extra) -> dict:
        if name not in self.dirs:
            path = self.root / name
            path.mkdir(mode=0o700)
            self.dirs[name] = str(path)
        return dict(self.base, ANYRAY_CLUSTER_DIR=self.dirs[name], **extra)

    def records(self) -> list[dict]:
        return [r for d in self.dirs.values() for r in files.local_nodes(d)]

    def stop_all(self) -> None:
        for record in self.records():
            kill_tree(record["pid"])


@pytest.fixture
def machines(tmp_path):
    m = Machines(tmp_path)
    yield m
    m.stop_all()


def shell(env, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """``command`` as a user types it, ``anyray`` meaning this checkout's."""
    anyray_cmd = " ".join(shlex.quote(a) for a in ANYRAY)
    result = subprocess.run(command.replace("anyray ", anyray_cmd + " ", 1), shell=True, env=env,
                            capture_output=True, text=True, timeout=WAIT)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def run_ray_script(env, tmp_path, init_line: str, name: str) -> subprocess.CompletedProcess:
    """A script that says only ``import ray``, run with ``anyray run``: it connects with ``init_line``,
    runs a task on every node, and prints what it saw."""
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent('''
        import ray

        {init}

        @ray.remote
        def where(x):
            import os
            return x * 2, os.environ.get("ANYRAY_CLUSTER_DIR", "")

        nodes = [n for n in ray.nodes() if n["Alive"]]
        print("NODES", len(nodes))
        print("DOUBLED", ray.get(where.remote(21))[0])
        print("CPUS", ray.cluster_resources()["CPU"])
        ray.shutdown()
    ''').format(init=init_line))
    return subprocess.run([*ANYRAY, "run", str(script)], env=env, capture_output=True, text=True, timeout=WAIT,
                          cwd=str(tmp_path))


def assert_connected(result, nodes: int = 2) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"NODES {nodes}" in result.stdout
    assert "DOUBLED 42" in result.stdout
    assert "CPUS 3.0" in result.stdout


def wait_for_nodes(env, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        out = subprocess.run([*ANYRAY, "list", "nodes", "--format", "json"], env=env, capture_output=True,
                             text=True, timeout=WAIT)
        if out.returncode == 0 and len(json.loads(out.stdout)) == count:
            return
        time.sleep(0.1)
    raise AssertionError(f"the cluster never had {count} nodes")


@pytest.mark.parametrize("ports", ["free ports", "Ray's own ports"])
def test_ray_s_cluster_commands_work_verbatim(machines, tmp_path, ports):
    """The commands of Ray's documentation and the early API pages, `ray` replaced by `anyray`: a head on
    one machine, a node joining it from another by the password alone, and drivers connecting by every
    address form, from the head's machine and from a third that has no token file."""
    if ports == "Ray's own ports":
        port, client_port = 6379, 10001
        taken = [p for p in (port, client_port) if not port_is_free(p)]
        if taken:
            pytest.skip(f"port {taken[0]} is in use on this machine: the same commands run on free ports above")
        client_flag = ""
    else:
        port, client_port = free_port(), free_port()
        client_flag = f" --ray-client-server-port {client_port}"
    head_env, node_env, outside_env = machines.env("head"), machines.env("other"), machines.env("outside")

    shell(head_env, f"anyray start --head --port={port} --redis-password {PASSWORD} --num-cpus 2" + client_flag)
    head = next(r for r in files.local_nodes(machines.dirs["head"]) if r["head"])
    assert head["address"] == f"127.0.0.1:{port}"
    assert head["ports"].get("Ray Client") == client_port
    shell(node_env, f"anyray start --address='127.0.0.1:{port}' --redis-password {PASSWORD} --num-cpus 1")
    assert not os.path.exists(os.path.join(machines.dirs["other"], "token"))  # joined without the token file
    wait_for_nodes(head_env, 2)

    # On the head's machine: through the token file the head wrote.
    for i, line in enumerate(['ray.init(address="auto")', 'ray.init("auto")',
                              f'ray.init(address="127.0.0.1:{port}")',
                              f'ray.init(address="ray://127.0.0.1:{client_port}")']):
        assert_connected(run_ray_script(head_env, tmp_path, line, f"head_{i}"))
    # From a machine without the token file: the password is the cluster's secret.
    assert_connected(run_ray_script(outside_env, tmp_path,
                                    f'ray.init(redis_address="127.0.0.1:{port}", _redis_password="{PASSWORD}")',
                                    "outside_redis_address"))
    assert_connected(run_ray_script(dict(outside_env, ANYRAY_REDIS_PASSWORD=PASSWORD), tmp_path,
                                    f'ray.init(address="ray://127.0.0.1:{client_port}")', "outside_ray_client"))
    # ... and without it, a clear refusal that says what to pass (and no hang).
    refused = run_ray_script(outside_env, tmp_path, f'ray.init(address="127.0.0.1:{port}")', "outside_no_secret")
    assert refused.returncode != 0
    assert "No cluster token at" in refused.stderr and "_redis_password" in refused.stderr
    # $RAY_ADDRESS, as Ray reads it, with a script that calls plain ray.init().
    assert_connected(run_ray_script(dict(head_env, RAY_ADDRESS=f"127.0.0.1:{port}"), tmp_path, "ray.init()",
                                    "ray_address_variable"))

    pids = [r["pid"] for r in machines.records()]
    shell(node_env, "anyray stop")
    shell(head_env, "anyray stop")
    assert not machines.records()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_a_driver_and_a_node_find_the_nodes_through_the_metadata_server(machines, tmp_path):
    """Given the Redis server's address (bare HOST:PORT, redis_address=, or a redis:// URL) instead of a node's,
    the nodes are found in the store; a joining node given it registers in that same store."""
    head_env, node_env, outside_env = machines.env("head"), machines.env("other"), machines.env("outside")
    redis_port = free_port()
    shell(head_env, f"anyray start --head --port 0 --ray-client-server-port 0 --redis-password {PASSWORD} "
                    f"--num-cpus 2 --metadata-port {redis_port}")
    shell(node_env, f"anyray start --address 127.0.0.1:{redis_port} --redis-password {PASSWORD} --num-cpus 1")
    wait_for_nodes(head_env, 2)
    for i, line in enumerate([f'ray.init(redis_address="127.0.0.1:{redis_port}", _redis_password="{PASSWORD}")',
                              f'ray.init(address="127.0.0.1:{redis_port}", _redis_password="{PASSWORD}")',
                              f'ray.init(address="redis://:{PASSWORD}@127.0.0.1:{redis_port}")']):
        assert_connected(run_ray_script(outside_env, tmp_path, line, f"via_redis_{i}"))
    no_password = run_ray_script(outside_env, tmp_path, f'ray.init(address="127.0.0.1:{redis_port}")', "no_pw")
    assert no_password.returncode != 0
    assert "is a Redis server that wants a password" in no_password.stderr


def test_a_cluster_on_etcd_is_found_by_the_etcd_server_s_address(machines, tmp_path):
    head_env = machines.env("head")
    etcd_port = free_port()
    shell(head_env, f"anyray start --head --port 0 --ray-client-server-port 0 --metadata etcd "
                    f"--metadata-port {etcd_port} --num-cpus 3")
    for i, line in enumerate([f'ray.init(address="etcd://127.0.0.1:{etcd_port}")',
                              f'ray.init(address="127.0.0.1:{etcd_port}")']):
        assert_connected(run_ray_script(head_env, tmp_path, line, f"via_etcd_{i}"), nodes=1)


def _shown_by(records: list[dict], cluster_dirs: list[str]) -> list[str]:
    """What anyone on the machine can see of the daemons: their command lines and environments (and their
    children's: fork servers, workers, Redis), and what they logged."""
    shown = []
    for record in records:
        daemon = psutil.Process(record["pid"])
        for proc in (daemon, *daemon.children(recursive=True)):
            try:
                shown += [" ".join(proc.cmdline()), json.dumps(proc.environ())]
            except psutil.NoSuchProcess:
                pass
    for directory in cluster_dirs:
        for folder, _dirs, names in os.walk(directory):
            for name in names:
                if name.endswith(".log"):
                    with open(os.path.join(folder, name), errors="replace") as f:
                        shown.append(f.read())
    return shown


def test_no_password_or_token_shows_in_errors_logs_status_or_argv(machines, tmp_path):
    head_env, node_env = machines.env("head"), machines.env("other")
    secret = "Sekrit.pw.7"
    # A failed join: nothing listens there; the URL in the message is redacted.
    dead_port = free_port()
    failed = shell(node_env, f"anyray start --address redis://:{secret}@127.0.0.1:{dead_port}", check=False)
    assert failed.returncode != 0 and f"127.0.0.1:{dead_port}" in failed.stderr
    # A failed join: the server is there, the password is wrong.
    server = RedisServer.start(str(tmp_path), password="right-password")
    try:
        wrong = shell(node_env, f"anyray start --address redis://:{secret}@127.0.0.1:{server.port}", check=False)
        driver_wrong = subprocess.run(
            [sys.executable, "-c", f"import anyray; anyray.init(address='redis://:{secret}@127.0.0.1:{server.port}')"],
            env=node_env, capture_output=True, text=True, timeout=WAIT)
    finally:
        server.stop()
    assert wrong.returncode != 0 and "redis://***@127.0.0.1" in wrong.stderr
    assert driver_wrong.returncode != 0 and "redis://***@127.0.0.1" in driver_wrong.stderr
    # A cluster whose head has the password, a node that joined by the Redis URL with it, a driver.
    redis_port = free_port()
    shell(head_env, f"anyray start --head --port 0 --ray-client-server-port 0 --redis-password {secret} "
                    f"--metadata-port {redis_port}")
    shell(node_env, f"anyray start --address redis://:{secret}@127.0.0.1:{redis_port}")
    wait_for_nodes(head_env, 2)
    ran = run_ray_script(dict(node_env, ANYRAY_REDIS_PASSWORD=secret), tmp_path,
                         f'ray.init(address="redis://:{secret}@127.0.0.1:{redis_port}")', "secret_driver")
    assert ran.returncode == 0, ran.stderr
    status = shell(head_env, "anyray status").stdout + shell(head_env, "anyray list nodes --format json").stdout
    token = open(os.path.join(machines.dirs["head"], "token")).read().strip()
    shown = [failed.stdout, failed.stderr, wrong.stdout, wrong.stderr, driver_wrong.stdout, driver_wrong.stderr,
             ran.stdout, ran.stderr, status, *_shown_by(machines.records(), list(machines.dirs.values()))]
    for text in shown:
        assert secret not in text
        assert token not in text


def test_start_block_stays_in_the_foreground_without_the_password_in_its_argv(machines):
    env = machines.env("head")
    proc = subprocess.Popen([*ANYRAY, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                             "--redis-password", PASSWORD, "--block"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT
        while not files.local_nodes(machines.dirs["head"]):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the blocking node never served"
            time.sleep(0.05)
        record = files.local_nodes(machines.dirs["head"])[0]
        assert record["pid"] == proc.pid  # this very process serves, in the foreground
        assert PASSWORD not in " ".join(psutil.Process(proc.pid).cmdline())
        ran = subprocess.run([sys.executable, "-c", "import anyray; anyray.init('auto'); "
                              "print(anyray.get(anyray.put('blocked')))"], env=env, capture_output=True, text=True,
                             timeout=WAIT)
        assert ran.stdout.strip() == "blocked", ran.stderr
        shell(env, "anyray stop")
        assert proc.wait(WAIT) == 0
    finally:
        if proc.poll() is None:
            kill_tree(proc.pid)
            proc.wait()


def test_ray_flags_anyray_lacks_are_named_in_the_error(machines):
    env = machines.env("head")
    result = shell(env, "anyray start --head --temp-dir=/tmp/ray --min-worker-port 10002 --no-such-flag", check=False)
    assert result.returncode == 2
    assert "Ray's --temp-dir, --min-worker-port are not supported by `anyray start`" in result.stderr
    assert "Unknown option --no-such-flag" in result.stderr
    assert "unrecognized arguments" not in result.stderr
    assert not machines.records()  # nothing started


def test_dashboard_flags_are_taken_and_recorded(machines):
    env = machines.env("head")
    port = free_port()  # the dashboard itself: tests/test_dashboard_api.py
    shell(env, f"anyray start --head --port 0 --ray-client-server-port 0 --include-dashboard=true "
               f"--dashboard-host=127.0.0.1 --dashboard-port {port}")
    record = machines.records()[0]
    assert (record["include_dashboard"], record["dashboard_host"], record["dashboard_port"], record["dashboard_url"]) \
        == (True, "127.0.0.1", port, f"http://127.0.0.1:{port}")
    assert "head only: serve the dashboard" in " ".join(shell(env, "anyray start --help").stdout.split())


def test_fixed_node_and_object_manager_ports(machines, tmp_path):
    """A node started with --node-manager-port serves there; other nodes read its objects on its
    --object-manager-port."""
    head_env, node_env = machines.env("head"), machines.env("other")
    shell(head_env, f"anyray start --head --port 0 --ray-client-server-port 0 --redis-password {PASSWORD} "
                    f"--num-cpus 1")
    head = machines.records()[0]
    node_port, object_port = free_port(), free_port()
    shell(node_env, f"anyray start --address {head['address']} --redis-password {PASSWORD} --num-cpus 1 "
                    f"--resources '{{\"other\": 1}}' --node-manager-port {node_port} "
                    f"--object-manager-port {object_port}")
    other = files.local_nodes(machines.dirs["other"])[0]
    assert other["address"] == f"127.0.0.1:{node_port}"
    assert {k: v for k, v in other["ports"].items() if k != "metrics"} == {"node": node_port,
                                                                          "object manager": object_port}
    wait_for_nodes(head_env, 2)
    script = tmp_path / "objects.py"
    script.write_text(textwrap.dedent('''
        import numpy as np
        import ray

        ray.init(address="auto")

        @ray.remote(resources={"other": 1})
        def big():
            return np.arange(2_000_000)

        @ray.remote(num_cpus=1)
        def total(a):
            return int(a.sum())

        ref = big.remote()
        print("SUM", ray.get(total.remote(ref)), int(ray.get(ref).sum()))
    '''))
    ran = subprocess.run([*ANYRAY, "run", str(script)], env=head_env, capture_output=True, text=True, timeout=WAIT)
    assert ran.returncode == 0, ran.stderr
    expected = 2_000_000 * 1_999_999 // 2
    assert f"SUM {expected} {expected}" in ran.stdout
    # The objects went out through the object manager's port.
    other_proc = psutil.Process(other["pid"])
    served = {c.laddr.port for c in other_proc.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED}
    assert object_port in served


def test_stop_force_kills_the_daemons_and_what_they_started(machines):
    env = machines.env("head")
    shell(env, "anyray start --head --port 0 --ray-client-server-port 0")
    record = machines.records()[0]
    daemon = psutil.Process(record["pid"])
    ran = subprocess.run([sys.executable, "-c", "import anyray; anyray.init('auto'); "
                          "print(anyray.get(anyray.remote(lambda: 1).remote()))"], env=env, capture_output=True,
                         text=True, timeout=WAIT)
    assert ran.returncode == 0, ran.stderr
    procs = [daemon, *daemon.children(recursive=True)]
    assert len(procs) >= 3  # the daemon, its Redis, its fork server (and workers)
    daemon.send_signal(signal.SIGSTOP)  # a stuck daemon: SIGTERM alone would not end it
    try:
        out = shell(env, "anyray stop --force")
    finally:
        for p in procs:
            try:
                p.send_signal(signal.SIGCONT)
            except psutil.NoSuchProcess:
                pass
    assert "Killed the anyray node" in out.stdout
    gone, alive = psutil.wait_procs(procs, timeout=WAIT)
    assert not alive
    assert not machines.records()


def test_two_drivers_in_different_namespaces_do_not_see_each_other_s_named_actors(machines):
    env = machines.env("head")
    shell(env, "anyray start --head --port 0 --ray-client-server-port 0 --num-cpus 2")
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent('''
        import sys, anyray
        anyray.init(address="auto", namespace="team-a")

        @anyray.remote
        class Box:
            def value(self):
                return "a's box"

        box = Box.options(name="box").remote()
        assert anyray.get(box.value.remote()) == "a's box"
        print("READY", flush=True)
        sys.stdin.readline()  # keeps the driver (and its namespace's actor) until the test is done
    ''')], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "READY", owner.stderr.read()
        other = subprocess.run([sys.executable, "-c", textwrap.dedent('''
            import anyray
            anyray.init(address="auto", namespace="team-b")
            print("LISTED", anyray.list_named_actors())
            try:
                anyray.get_actor("box")
            except ValueError as exc:
                print("NOT FOUND", "box" in str(exc))
            box = anyray.get_actor("box", namespace="team-a")  # named explicitly, it is reachable
            print("EXPLICIT", anyray.get(box.value.remote()))
            print("ALL", sorted((a["namespace"], a["name"]) for a in anyray.list_named_actors(all_namespaces=True)))
        ''')], env=env, capture_output=True, text=True, timeout=WAIT)
        assert other.returncode == 0, other.stderr
        assert "LISTED []" in other.stdout
        assert "NOT FOUND True" in other.stdout
        assert "EXPLICIT a's box" in other.stdout
        assert "('team-a', 'box')" in other.stdout
    finally:
        owner.stdin.close()
        owner.wait(WAIT)


# -- init's addresses, in this process ------------------------------------------------------------------


@pytest.fixture
def no_runtime(monkeypatch, tmp_path):
    for variable in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS", "ANYRAY_REDIS_PASSWORD",
                     "ANYRAY_CLUSTER_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ANYRAY_CLUSTER_DIR", str(tmp_path / "none"))
    anyray.shutdown()
    yield
    anyray.shutdown()


@pytest.mark.parametrize("call", [
    lambda port: anyray.init(f"127.0.0.1:{port}"),
    lambda port: anyray.init(address=f"127.0.0.1:{port}"),
    lambda port: anyray.init(address=f"ray://127.0.0.1:{port}"),
    lambda port: anyray.init(redis_address=f"127.0.0.1:{port}", _redis_password="pw-secret-9"),
    lambda port: anyray.init(address=f"redis://:pw-secret-9@127.0.0.1:{port}"),
    lambda port: anyray.init(address=f"etcd://127.0.0.1:{port}"),
], ids=["positional", "address", "ray-client", "redis_address", "redis-url", "etcd-url"])
def test_an_address_alone_selects_the_cluster_backend_and_nothing_there_fails_fast(no_runtime, call):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"Nothing answers at 127\.0\.0\.1:{port}") as info:
        call(port)
    assert time.monotonic() - started < 30  # refused at once: no retrying for long, no hang
    assert "pw-secret-9" not in str(info.value)
    assert not anyray.is_initialized()


@pytest.mark.parametrize("variable", ["ANYRAY_ADDRESS", "RAY_ADDRESS"])
def test_an_address_in_the_environment_selects_the_cluster_backend(no_runtime, monkeypatch, variable):
    monkeypatch.setenv(variable, "auto")
    with pytest.raises(ConnectionError, match=r"address='auto' found no anyray cluster on this machine"):
        anyray.init()


def test_init_auto_positional_is_the_address(no_runtime):
    with pytest.raises(ConnectionError, match=r"address='auto' found no anyray cluster"):
        anyray.init("auto")
    with pytest.raises(ValueError, match=r"the first argument is an address too"):
        anyray.init("auto", address="127.0.0.1:1")


@pytest.mark.parametrize("url, said", [
    ("redis://:pw@127.0.0.1:notaport/0", "A metadata server's URL is redis://HOST:PORT"),
    ("redis://:pw@/0", "A metadata server's URL is redis://HOST:PORT"),
    ("etcd://127.0.0.1", "A metadata server's URL is redis://HOST:PORT"),
    ("mongodb://:pw@127.0.0.1:27017", "Unknown cluster address scheme 'mongodb://'"),
    ("127.0.0.1", "A cluster address is 'auto', HOST:PORT"),
    ("127.0.0.1:99999", "A cluster address is 'auto', HOST:PORT"),
])
def test_a_malformed_address_is_a_clear_error_without_the_password(no_runtime, url, said):
    with pytest.raises(ValueError) as info:
        anyray.init(backend="cluster", address=url)
    assert said in str(info.value)
    assert ":pw@" not in str(info.value)
    assert not anyray.is_initialized()


def test_something_else_at_the_address_is_named(no_runtime):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve():
            conn, _ = listener.accept()
            conn.sendall(b"SSH-2.0-OpenSSH\r\n")
            time.sleep(1)
            conn.close()

        import threading

        threading.Thread(target=serve, daemon=True).start()
        with pytest.raises(ConnectionError, match=r"no anyray node, Redis or etcd server"):
            anyray.init(address=f"127.0.0.1:{port}")


def test_the_default_backend_with_no_environment_variable_is_multiprocess(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS")}
    ran = subprocess.run([sys.executable, "-c", "import anyray; print(anyray.init().backend); "
                          "print(anyray.get(anyray.remote(lambda: 7).remote()))"],
                         env=env, capture_output=True, text=True, timeout=WAIT)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ["multiprocess", "7"]
