"""Get-or-create of one named actor by several drivers of a cluster at once: everyone gets the same actor.

Each driver checked the name, found nothing, and then lost the race to claim it
in the metadata store, which raised "already exists ... pass get_if_exists=True"
although it had. The node now hands the loser the winner's actor.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from servers import EtcdServer, RedisServer
from test_cluster import WAIT, cli, start_head, status_nodes, wait_until

DRIVERS = 4
ROUNDS = 5

DRIVER = textwrap.dedent("""
    import sys
    import threading

    import anyray

    anyray.init(backend="cluster", address="auto", namespace="shared")

    @anyray.remote(num_cpus=0)
    class Registry:
        def __init__(self):
            self.seen = []

        def join(self, who):
            self.seen.append(who)
            return len(self.seen)

    me = sys.argv[1]
    for round in range(int(sys.argv[2])):
        start = threading.Barrier(3)
        errors = []

        def get_or_create(thread):
            try:
                start.wait(60)
                actor = Registry.options(name=f"registry-{round}", get_if_exists=True, lifetime="detached").remote()
                anyray.get(actor.join.remote(f"{me}/{thread}"), timeout=60)
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=get_or_create, args=(t,)) for t in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        if errors:
            print("ERRORS", errors, flush=True)
            sys.exit(1)
    print("ok", flush=True)
""")

CHECK = textwrap.dedent("""
    import sys

    import anyray

    anyray.init(backend="cluster", address="auto", namespace="shared")
    for round in range(int(sys.argv[1])):
        actor = anyray.get_actor(f"registry-{round}")
        seen = anyray.get(actor.join.remote("check"), timeout=60) - 1
        print(round, seen, flush=True)
        anyray.kill(actor)
""")


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_drivers_racing_to_get_or_create_one_name_share_one_actor(cluster_env, tmp_path, kind):
    server = (RedisServer if kind == "redis" else EtcdServer).start(str(tmp_path))
    try:
        head = start_head(cluster_env, "--metadata", server.url, "--num-cpus", "2")
        cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "2")
        wait_until(lambda: len(status_nodes(cluster_env)) == 2, "both nodes")
        driver, check = tmp_path / "driver.py", tmp_path / "check.py"
        driver.write_text(DRIVER)
        check.write_text(CHECK)
        procs = [subprocess.Popen([sys.executable, str(driver), f"driver{i}", str(ROUNDS)], env=cluster_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i in range(DRIVERS)]
        for proc in procs:
            try:
                out, _ = proc.communicate(timeout=4 * WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError("a driver hung") from None
            assert proc.returncode == 0 and "ok" in out, out
        done = subprocess.run([sys.executable, str(check), str(ROUNDS)], env=cluster_env, capture_output=True,
                              text=True, timeout=2 * WAIT)
        assert done.returncode == 0, done.stdout + done.stderr
        # Every round's actor saw all 3 threads of every driver: one actor per name, shared by all.
        assert done.stdout.split("\n")[:ROUNDS] == [f"{r} {DRIVERS * 3}" for r in range(ROUNDS)], done.stdout
    finally:
        cli(cluster_env, "stop", check=False)
        server.stop()
