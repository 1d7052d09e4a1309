"""Prometheus ``/metrics``, scraped over HTTP from real processes: a node daemon's (``anyray start``, on a free port
by default or ``--metrics-export-port``), and a single-machine driver's (``init(_metrics_export_port=N)``).

Each shows the tasks by state and name (``ray_tasks``), the actors (``ray_actors``), the bytes in the store
(``ray_object_store_memory``), the workers, the scheduling latency, and the user's ``ray.util.metrics``
recorded in several worker processes and the driver, added up on the node (``ray_<name>_total``).
"""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_cluster import WAIT, cli

import anyray
from anyray.adapters.cluster import files
from anyray.util.metrics import Counter, Gauge, Histogram


def scrape(url: str) -> dict:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    with urllib.request.urlopen(url, timeout=WAIT) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_until(url: str, check) -> dict:
    """Scrape until ``check(samples)`` holds or raises nothing (workers send their metrics about once a second,
    and a driver passes on its directly run tasks' records about twice a second)."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = scrape(url)
        try:
            if check(samples) is not False or time.monotonic() > deadline:
                return samples
        except (AssertionError, KeyError):
            if time.monotonic() > deadline:
                return samples
        time.sleep(0.2)


@anyray.remote
def square(x):
    return x * x


@anyray.remote
def fails():
    raise ValueError("on purpose")


@anyray.remote
class Incrementer:
    """Each actor is a worker process of its own: the counter is incremented from several processes."""

    def __init__(self):
        self.counter = Counter("test_items", "items handled", tag_keys=("kind",))
        self.level = Gauge("test_level")
        self.sizes = Histogram("test_sizes", "sizes", boundaries=[10, 100])

    def handle(self, n):
        for _ in range(n):
            self.counter.inc(tags={"kind": "actor"})
        self.level.set(n)
        self.sizes.observe(n * 10)
        return n


def run_work() -> list:
    """The work both tests scrape: 10 squares, one failure, 2 actors adding 3 and 4, the driver adding 1, a
    1 MB object in the store. Returns what keeps the object and the actors alive."""
    assert anyray.get([square.remote(i) for i in range(10)], timeout=WAIT) == [i * i for i in range(10)]
    with pytest.raises(ValueError):
        anyray.get(fails.remote(), timeout=WAIT)
    actors = [Incrementer.remote(), Incrementer.remote()]
    assert anyray.get([a.handle.remote(n) for a, n in zip(actors, (3, 4))], timeout=WAIT) == [3, 4]
    Counter("test_items", "items handled", tag_keys=("kind",)).inc(tags={"kind": "driver"})
    return [anyray.put(b"x" * 1_000_000), actors]


def items(samples, kind) -> float:
    return samples.get(("ray_test_items_total", (("kind", kind),)), 0)


def check_work(samples) -> None:
    assert samples[("ray_tasks", (("Name", "square"), ("State", "FINISHED")))] == 10
    assert samples[("ray_tasks", (("Name", "fails"), ("State", "FAILED")))] == 1
    assert samples[("ray_actors", (("Name", "Incrementer"), ("State", "ALIVE")))] == 2
    assert samples[("ray_object_store_memory", (("Location", "MMAP_SHM"), ("ObjectState", "SEALED")))] >= 1_000_000
    assert samples[("ray_object_store_num_local_objects", ())] >= 1
    assert samples[("anyray_workers", (("State", "ACTOR"),))] == 2
    assert samples[("ray_resources", (("Name", "CPU"), ("State", "USED")))] == 0
    counts = [v for (name, _), v in samples.items() if name == "anyray_scheduling_latency_seconds_count"]
    assert counts and counts[0] >= 1  # each placement: a task the node starts, or a worker it lends a driver
    assert items(samples, "actor") == 7  # 3 + 4, from two worker processes
    assert items(samples, "driver") == 1
    assert samples[("ray_test_level", ())] in (3, 4)  # a Gauge: the last value set, whichever worker set it
    assert samples[("ray_test_sizes_count", ())] == 2
    assert samples[("ray_test_sizes_bucket", (("le", "100.0"),))] == 2
    assert samples[("ray_test_sizes_bucket", (("le", "10.0"),))] == 0


def test_a_node_daemon_serves_metrics_on_a_free_port_by_default(cluster_env):
    started = cli(cluster_env, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                  "--num-cpus", "2").stdout
    head = files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"])[0]
    port = head["ports"]["metrics"]
    assert f"port {port} (metrics)" in started
    url = f"http://127.0.0.1:{port}/metrics"
    anyray.init(backend="cluster", address="auto")
    try:
        kept = run_work()
        samples = scrape_until(url, check_work)
        check_work(samples)
        assert samples[("ray_placement_groups", (("State", "CREATED"),))] == 0  # the head reports the groups
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=WAIT)
        del kept
    finally:
        anyray.shutdown()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_multiprocess_driver_serves_metrics_with_metrics_export_port():
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    anyray.init(backend="multiprocess", num_cpus=2, _metrics_export_port=port)
    try:
        kept = run_work()
        check_work(scrape_until(url, check_work))
        del kept
    finally:
        anyray.shutdown()
    with pytest.raises(urllib.error.URLError):  # the server ends with the driver
        urllib.request.urlopen(url, timeout=WAIT)


def test_a_local_driver_serves_the_user_metrics_of_its_tasks():
    port = free_port()
    anyray.init(backend="local", num_cpus=2, _metrics_export_port=port)
    try:
        assert anyray.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
        Counter("test_local_items").inc(2)
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert samples[("ray_test_local_items_total", ())] == 2
    finally:
        anyray.shutdown()


def test_a_bad_metrics_port_is_refused_where_it_is_given(cluster_env):
    with pytest.raises(ValueError, match="_metrics_export_port must be a port number from 0 to 65535"):
        anyray.init(backend="multiprocess", _metrics_export_port=70000)
    assert not anyray.is_initialized()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(OSError, match="cannot serve metrics on 127.0.0.1:.*pick another one"):
            anyray.init(backend="multiprocess", _metrics_export_port=taken.getsockname()[1])
        assert not anyray.is_initialized()
        result = cli(cluster_env, "start", "--head", "--port", "0", "--ray-client-server-port", "0",
                     "--metrics-export-port", str(taken.getsockname()[1]), check=False)
    assert result.returncode != 0 and "cannot serve metrics" in result.stderr
    result = cli(cluster_env, "start", "--head", "--metrics-export-port", "70000", check=False)
    assert result.returncode != 0 and "a port is a number from 0 to 65535" in result.stderr


@anyray.remote(max_calls=1)
def count_once():
    Counter("test_retired").inc()
    return True


def test_metrics_of_workers_that_retire_at_once_are_not_lost():
    """A worker told to exit (here: ``max_calls=1`` retires it after one task) sends what it recorded first."""
    port = free_port()
    anyray.init(backend="multiprocess", num_cpus=2, _metrics_export_port=port)
    try:
        assert all(anyray.get([count_once.remote() for _ in range(4)], timeout=WAIT))
        samples = scrape_until(f"http://127.0.0.1:{port}/metrics",
                               lambda s: s.get(("ray_test_retired_total", ())) == 4)
        assert samples.get(("ray_test_retired_total", ())) == 4
    finally:
        anyray.shutdown()
