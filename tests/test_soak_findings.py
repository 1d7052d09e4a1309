"""Faults the chaos soak (benchmarks/soak.py) found, each held by a test of its own against real node daemons and
a real Redis server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time

import redis
from servers import RedisServer
from test_cluster import start_head

WAIT = 60.0


def start_driver(env, body: str) -> subprocess.Popen:
    code = "import anyray\nanyray.init(backend='cluster', address='auto')\n" + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_placement_groups_placed_while_the_watch_reconnects_are_ready_and_keep_their_bundles(cluster_env, tmp_path):
    """Groups placed while the node's watch of the store was reconnecting (Redis restarted, or the watch's
    connection dropped; in the soak, also a placer round that ran before the watch delivered the change): the
    node's copy of their records still said PENDING, so its placer placed them again each round, and, the
    store saying CREATED, gave back the bundles they held; work into them waited forever (and ``pg.ready()``
    waited for a change the watch never delivered)."""
    server = RedisServer.start(str(tmp_path))
    try:
        start_head(cluster_env, "--metadata", server.url, "--num-cpus", "2", "--resources", '{"slot": 100}')
        run = start_driver(cluster_env, """
            import json, sys
            from anyray.util.placement_group import placement_group
            from anyray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            @anyray.remote(num_cpus=0, resources={"slot": 1})
            def one(i):
                return i

            print("ready", flush=True)
            sys.stdin.readline()  # the watch's connection keeps dropping now
            groups = [placement_group([{"slot": 1}]) for _ in range(20)]
            print("made", flush=True)
            sys.stdin.readline()  # the watch is back
            ready, _ = anyray.wait([pg.ready() for pg in groups], num_returns=20, timeout=20)
            refs = [one.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, 0)).remote(i)
                    for i, pg in enumerate(groups)]
            ran, _ = anyray.wait(refs, num_returns=20, timeout=20)
            print(json.dumps({"ready": len(ready), "ran": len(ran),
                              "held": 100 - anyray.available_resources().get("slot", 0)}))
        """)
        assert run.stdout.readline().strip() == "ready"
        client = redis.Redis(port=server.port, password=server.password)
        run.stdin.write("go\n")
        run.stdin.flush()
        made = []
        reader = threading.Thread(target=lambda: made.append(run.stdout.readline()))
        reader.start()
        deadline = time.monotonic() + WAIT
        while reader.is_alive() and time.monotonic() < deadline:
            client.client_kill_filter(_type="pubsub")  # drops every watch's connection: it subscribes again
            time.sleep(0.002)
        time.sleep(2.0)  # every watch has subscribed again
        run.stdin.write("go\n")
        run.stdin.flush()
        out, err = run.communicate(timeout=WAIT * 2)
        assert run.returncode == 0, err
        assert json.loads(out.strip().splitlines()[-1]) == {"ready": 20, "ran": 20, "held": 20}
    finally:
        server.stop()
