"""Tests of the ray plugin alone: what the conformance suite cannot see from the public API.

Run with ``pytest plugins/anyray-ray/tests``; the conformance suite itself
runs with ``pytest --pyargs anyray.conformance --backend ray``.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import anyray
from anyray import exceptions
from anyray.backend_kit import current_runtime
from anyray.backend_kit.testing import MetadataStoreContract

ray = pytest.importorskip("ray")


def run_script(code: str, timeout: float = 180) -> str:
    """Run ``code`` in a fresh interpreter (its own Ray), return its stdout; fail on a non-zero exit."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def session():
    if anyray.is_initialized():
        anyray.shutdown()
    anyray.init(backend="ray", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    anyray.shutdown()


# -- discovery and lifecycle (fresh interpreters) ---------------------------------


def test_listing_backends_does_not_import_ray():
    out = run_script("""
        import sys
        from anyray.backend_kit import list_backends
        found = {b.name: b for b in list_backends()}
        assert found["ray"].backend is not None, found["ray"].error
        print("ray" in sys.modules)
    """)
    assert out.strip() == "False"


def test_attaches_to_a_ray_the_driver_started_and_leaves_it_running():
    out = run_script("""
        import ray, anyray
        ray.init(num_cpus=1, include_dashboard=False)
        try:
            anyray.init(backend="ray", num_cpus=2)
        except ValueError as exc:
            print("refused:", "num_cpus" in str(exc))
        anyray.init(backend="ray")
        @anyray.remote
        def square(x):
            return x * x
        print(anyray.get(square.remote(7)))
        anyray.shutdown()
        print(ray.is_initialized())
        ray.shutdown()
    """)
    assert out.split() == ["refused:", "True", "49", "True"]


def test_shutdown_stops_the_ray_it_started():
    out = run_script("""
        import ray, anyray
        anyray.init(backend="ray", num_cpus=1, include_dashboard=False)
        print(ray.is_initialized())
        anyray.shutdown()
        print(ray.is_initialized())
    """)
    assert out.split() == ["True", "False"]


def test_connects_to_a_running_cluster_by_address():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a CLI-started head would want its token otherwise
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    temp_dir = f"/tmp/anyray-ray-{os.getpid()}"  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([ray_cli, "start", "--head", "--port=6391", "--num-cpus=1", "--include-dashboard=false",
                             f"--temp-dir={temp_dir}", "--block"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        code = textwrap.dedent("""
            import time, anyray
            for attempt in range(60):
                try:
                    anyray.init(backend="ray", address="127.0.0.1:6391")
                    break
                except ConnectionError:
                    time.sleep(1)
            @anyray.remote
            def plus_one(x):
                return x + 1
            print(anyray.get(plus_one.remote(1)), anyray.cluster_resources()["CPU"])
            anyray.shutdown()
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["2", "1.0"]
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
        # `ray start` leaves the cluster's address where a later ray.init() would find and join it.
        for left in (os.path.join(temp_dir, "ray_current_cluster"), "/tmp/ray/ray_current_cluster"):
            try:
                with open(left) as fh:
                    if fh.read().strip().endswith(":6391"):
                        os.remove(left)
            except OSError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_objects_refs_and_actors_cross_nodes():
    out = run_script("""
        import numpy as np
        from ray.cluster_utils import Cluster
        import anyray

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"head": 1}})
        cluster.add_node(num_cpus=1, resources={"second": 1})
        cluster.wait_for_nodes()
        anyray.init(backend="ray", address=cluster.address)

        @anyray.remote(resources={"second": 1})
        def make():
            return [anyray.put(np.arange(100_000)), anyray.get_runtime_context().get_node_id()]

        @anyray.remote(resources={"head": 1})
        def consume(box):
            return int(anyray.get(box[0]).sum()), anyray.get_runtime_context().get_node_id()

        @anyray.remote(resources={"second": 1})
        class Far:
            def node(self):
                return anyray.get_runtime_context().get_node_id()

        box = anyray.get(make.remote())  # a ref owned by a worker on the second node, inside a list
        total, node = anyray.get(consume.remote(box))
        print(len([n for n in anyray.nodes() if n["Alive"]]), total == sum(range(100_000)), node != box[1],
              anyray.get(Far.remote().node.remote()) == box[1])
        anyray.shutdown()
        cluster.shutdown()
    """, timeout=300)
    assert out.split() == ["2", "True", "True", "True"]


# -- placement groups -------------------------------------------------------------


def test_a_placement_group_is_rays_own(session):
    from anyray.backend_kit import PlacementGroupSchedulingStrategy

    group = anyray.util.placement_group([{"CPU": 1}], name="plugin-group")
    try:
        assert group.wait(30)
        # Ray sees the same group, by the same id and name.
        table = ray.util.placement_group_table()[group.id.hex()]
        assert (table["name"], table["state"], table["bundles"]) == ("plugin-group", "CREATED", {0: {"CPU": 1.0}})
        assert ray.util.get_placement_group("plugin-group").id.binary() == group.id.binary()

        @anyray.remote(num_cpus=1)
        def ray_group():  # Ray's own view from inside the task
            return ray.util.get_current_placement_group().id.hex()

        strategy = PlacementGroupSchedulingStrategy(group)
        assert anyray.get(ray_group.options(scheduling_strategy=strategy).remote(), timeout=30) == group.id.hex()
    finally:
        anyray.util.remove_placement_group(group)
    assert ray.util.placement_group_table()[group.id.hex()]["state"] == "REMOVED"


def test_max_cpu_fraction_per_node_says_when_ray_has_dropped_it(session):
    import inspect

    if "_max_cpu_fraction_per_node" in inspect.signature(ray.util.placement_group).parameters:
        pytest.skip("this Ray still has _max_cpu_fraction_per_node")
    with pytest.raises(ValueError, match=f"not supported by Ray {ray.__version__}"):
        anyray.util.placement_group([{"CPU": 1}], _max_cpu_fraction_per_node=0.5)


# -- the state API beyond the conformance suite -----------------------------------


def test_list_jobs_lists_every_job_of_the_cluster_as_ray_does():
    out = run_script("""
        import subprocess, sys, ray, anyray
        list_jobs = anyray.util.state.list_jobs
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        other = ("import anyray; anyray.init(backend='ray', address=%r); "
                 "print(anyray.get_runtime_context().get_job_id())" % ray.get_runtime_context().gcs_address)
        done = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        anyray.init(backend="ray")
        jobs = {row.job_id: row for row in list_jobs(detail=True)}
        mine = jobs.pop(anyray.get_runtime_context().get_job_id())
        print(mine.status, mine.type, mine.driver_info["pid"] == str(__import__("os").getpid()))
        finished = [row for row in jobs.values() if row.driver_info["pid"] != str(__import__("os").getpid())]
        print(len(finished), finished[0].status, finished[0].type, finished[0].end_time > 0)
        anyray.shutdown()
        ray.shutdown()
    """)
    assert out.split() == ["RUNNING", "DRIVER", "True", "1", "SUCCEEDED", "DRIVER", "True"]


@anyray.remote
def nested_leaf():
    return 1


@anyray.remote
def nested_parent():
    anyray.get(nested_leaf.remote())
    return anyray.get_runtime_context().get_task_id()


def test_a_task_submitted_from_a_task_is_listed_with_its_parent(session):
    list_tasks = anyray.util.state.list_tasks  # the public API, as a program reads it
    parent = anyray.get(nested_parent.remote(), timeout=60)

    def leaves():
        return [row for row in list_tasks(filters=[("name", "=", "nested_leaf")]) if row.state == "FINISHED"]

    deadline = time.monotonic() + 60
    while not leaves() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [row.parent_task_id for row in leaves()] == [parent]  # the leaf keeps Ray's id: its submitter's


# -- data path ----------------------------------------------------------------------


def test_refs_map_to_ray_refs(session):
    ref = anyray.put(1)
    assert isinstance(ref.native, ray.ObjectRef)
    assert ray.get(ref.native) is not None  # the Ray object holds anyray's payload


def test_a_nested_ref_outlives_the_callers_ref(session):
    @anyray.remote
    class Holder:
        def take(self, box):
            self.box = box
            return True

        def read(self):
            return anyray.get(self.box[0])

    holder = Holder.remote()
    inner = anyray.put("kept alive by the actor")
    assert anyray.get(holder.take.remote([inner]))
    del inner
    gc.collect()
    time.sleep(0.5)
    assert anyray.get(holder.read.remote()) == "kept alive by the actor"


def test_an_actor_handle_inside_a_stored_value_keeps_the_actor(session):
    @anyray.remote
    class Box:
        def get(self):
            return "boxed"

    @anyray.remote
    def make():
        return [Box.remote()]

    [handle] = anyray.get(make.remote())
    assert anyray.get(handle.get.remote()) == "boxed"


def test_arrays_reach_a_task_without_a_copy(session):
    @anyray.remote
    def inspect(array):
        return array.flags.writeable, float(array.sum())

    writeable, total = anyray.get(inspect.remote(np.ones(1 << 18)))
    assert (writeable, total) == (False, float(1 << 18))


# -- failures -----------------------------------------------------------------------


def test_a_crashed_worker_is_retried(session, tmp_path):
    marker = tmp_path / "crashed-once"

    @anyray.remote(max_retries=1)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "second attempt"

    assert anyray.get(crash_once.remote(str(marker)), timeout=60) == "second attempt"


def test_a_crash_without_retries_raises_worker_crashed_error(session):
    @anyray.remote(max_retries=0)
    def crash():
        os._exit(1)

    # The error is stored as the task's value (the port's rule), so it keeps Ray's message, not its object.
    with pytest.raises(exceptions.WorkerCrashedError, match="worker died"):
        anyray.get(crash.remote(), timeout=60)


def test_ray_errors_are_translated():
    from anyray_ray.errors import translate

    assert type(translate(ray.exceptions.GetTimeoutError("late"))) is exceptions.GetTimeoutError
    assert type(translate(ray.exceptions.TaskCancelledError())) is exceptions.TaskCancelledError
    assert type(translate(ray.exceptions.ObjectLostError("ab" * 14, "owner", "site"))) is exceptions.ObjectLostError
    assert type(translate(ray.exceptions.ActorDiedError())) is exceptions.ActorDiedError
    from ray.core.generated.common_pb2 import ErrorType
    rebuild = translate(ray.exceptions.ObjectReconstructionFailedError(
        "ab" * 14, reason=ErrorType.Value("OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED")))
    assert type(rebuild) is exceptions.ObjectReconstructionFailedError
    assert isinstance(rebuild, exceptions.ObjectLostError)
    assert rebuild.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED" and "max_retries=0" in str(rebuild)
    assert isinstance(translate(ray.exceptions.RaySystemError("boom")), exceptions.AnyrayError)
    setup = translate(ray.exceptions.RuntimeEnvSetupError("pip failed"))  # Ray's message, not its str twice
    assert type(setup) is exceptions.RuntimeEnvSetupError
    assert str(setup) == str(ray.exceptions.RuntimeEnvSetupError("pip failed"))
    plain = ValueError("not Ray's")
    assert translate(plain) is plain
    task_error = translate(ray.exceptions.RayTaskError("f", "Traceback...", KeyError("k")))
    assert isinstance(task_error, exceptions.TaskError) and isinstance(task_error, KeyError)


# -- the metadata store on Ray's KV ---------------------------------------------------


class TestRayKVMetadataStore(MetadataStoreContract):
    watch_poll = 0.1  # anyray_ray.metadata.POLL

    @pytest.fixture
    def store(self, session, key_prefix):
        store = current_runtime().backend.metadata
        yield store
        store.delete_prefix(key_prefix)


def test_anyray_run_on_the_ray_backend_leaves_the_real_ray_in_place(tmp_path):
    """`anyray run --backend ray` runs a Ray script on Ray itself: `import ray` stays the real Ray."""
    script = tmp_path / "which_ray.py"
    script.write_text("import ray\nprint('module', ray.__name__, ray.__file__.endswith('ray/__init__.py'))\n")
    proc = subprocess.run([sys.executable, "-m", "anyray.cli", "run", "--backend", "ray", str(script)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "module ray True" in proc.stdout


# -- ray.util.metrics ------------------------------------------------------------------


@anyray.remote
def record_metrics():
    from anyray.util.metrics import Counter, Gauge, Histogram

    Counter("plugin_items", tag_keys=("kind",)).inc(2, tags={"kind": "task"})
    Gauge("plugin_level").set(5)
    Histogram("plugin_sizes", boundaries=[1, 10]).observe(3)
    made = current_runtime().backend.metric_sink._metrics
    return sorted((kind, name, type(metric).__module__) for (kind, name), metric in made.items())


def test_user_metrics_in_tasks_go_to_rays_own_metrics(session):
    """On Ray, anyray's ray.util.metrics records through Ray's (Ray's metrics agent exports them), in the driver
    and in Ray's workers alike."""
    assert anyray.get(record_metrics.remote()) == [
        ("counter", "plugin_items", "ray.util.metrics"), ("gauge", "plugin_level", "ray.util.metrics"),
        ("histogram", "plugin_sizes", "ray.util.metrics")]
    from anyray.util.metrics import TABLE

    assert anyray.get(record_metrics.remote()) and not TABLE  # nothing kept in anyray's own table
