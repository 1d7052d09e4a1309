"""Tests of the dask plugin alone: what the conformance suite cannot see from the public API.

Run with ``pytest plugins/anyray-dask/tests``; the conformance suite itself
runs with ``pytest conformance_tests --backend dask``. Crashes are real:
worker processes are killed with signals.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import anyray
from anyray.backend_kit import current_runtime
from anyray.backend_kit.testing import MetadataStoreContract
from anyray.exceptions import ActorDiedError, TaskCancelledError

pytest.importorskip("distributed")

TOOLS = os.path.join(os.path.dirname(__file__), "..", "tools")
sys.path.insert(0, TOOLS)
import with_dask_cluster  # noqa: E402


def run_script(code: str, timeout: float = 180, env=None) -> str:
    """Run ``code`` as a script file in a fresh interpreter; return its stdout, fail on a non-zero exit."""
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"anyray_dask_script_{os.getpid()}_{time.time_ns()}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(code))
    try:
        done = subprocess.run([sys.executable, path], capture_output=True, text=True, timeout=timeout, env=env)
    finally:
        os.remove(path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _driver_of(directory: str):
    try:
        with open(os.path.join(directory, "driver.pid")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def worker_pids() -> set[int]:
    me = psutil.Process()
    return {p.pid for p in me.children(recursive=True) if "dask_worker" in " ".join(p.cmdline())}


@pytest.fixture(scope="module")
def session():
    if anyray.is_initialized():
        anyray.shutdown()
    anyray.init(backend="dask", num_cpus=2)
    yield
    anyray.shutdown()


# -- discovery, startup and shutdown (fresh interpreters) -------------------------------------------------


def test_listing_backends_does_not_import_dask():
    out = run_script("""
        import sys
        from anyray.backend_kit import list_backends
        found = {b.name: b for b in list_backends()}
        assert found["dask"].backend is not None, found["dask"].error
        print("distributed" in sys.modules, "dask" in sys.modules)
    """)
    assert out.split() == ["False", "False"]


def test_a_script_without_a_main_guard_runs():
    # Dask's own local workers import the script again; the private cluster's workers must not.
    out = run_script("""
        import anyray
        anyray.init(backend="dask", num_cpus=2)
        print("started")

        @anyray.remote
        def square(x):
            return x * x

        print(anyray.get(square.remote(7)))
        anyray.shutdown()
    """)
    assert out.split() == ["started", "49"]


def test_shutdown_stops_every_worker_process():
    before = worker_pids()
    anyray.init(backend="dask", num_cpus=1, num_workers=1)
    started = worker_pids() - before
    assert started
    procs = [psutil.Process(p) for p in started] + [c for p in started for c in psutil.Process(p).children()]
    anyray.shutdown()
    gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive


def test_workers_of_a_killed_driver_exit_on_their_own():
    code = textwrap.dedent("""
        import os, sys, time, anyray
        anyray.init(backend="dask", num_cpus=1)
        print(os.getpid(), flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        driver.stdout.readline()
        workers = [c for c in psutil.Process(driver.pid).children(recursive=True)]
        assert workers
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        gone, alive = psutil.wait_procs(workers, timeout=90)  # --death-timeout 20 s, then their own shutdown
        assert not alive, [p.cmdline() for p in alive]
        # Its directory (the cluster's TLS key, spill space) goes when the next private cluster starts.
        from anyray_dask.cluster import DIR_PREFIX, sweep_stale_dirs

        left = [d for d in glob.glob(f"/tmp/{DIR_PREFIX}*") if _driver_of(d) == driver.pid]
        assert left
        sweep_stale_dirs()
        assert not [d for d in left if os.path.exists(d)]
    finally:
        if driver.poll() is None:
            driver.kill()


def test_the_private_cluster_admits_only_clients_with_its_certificate():
    out = run_script("""
        import anyray
        from distributed import Client
        from distributed.security import Security
        context = anyray.init(backend="dask", num_cpus=1)
        address = context.address_info["address"]
        print(address.split("://")[0], address.split("://")[1].split(":")[0])
        attempts = [address.replace("tls://", "tcp://"), address]
        for target, security in ((attempts[0], None), (attempts[1], Security.temporary())):
            try:
                Client(target, timeout="3s", security=security).close()
                print("admitted")
            except Exception as exc:
                print("refused")
        anyray.shutdown()
    """)
    assert out.split() == ["tls", "127.0.0.1", "refused", "refused"]


# -- an existing Dask cluster --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_cluster():
    address, procs = with_dask_cluster.start(workers=2, threads=1)
    try:
        with_dask_cluster.wait_ready(address, 2)
        yield address
    finally:
        with_dask_cluster.stop(procs)


def test_connects_to_a_running_dask_scheduler_and_leaves_it_running(dask_cluster):
    out = run_script(f"""
        import os, anyray
        try:
            anyray.init(backend="dask", address="{dask_cluster}", num_cpus=2)
        except ValueError as exc:
            print("refused:", "num_cpus" in str(exc))
        anyray.init(backend="dask", address="{dask_cluster}")

        @anyray.remote
        def pid():
            return os.getpid()

        pids = set(anyray.get([pid.remote() for _ in range(20)]))
        print(os.getpid() not in pids, anyray.cluster_resources()["CPU"], len(anyray.nodes()))
        anyray.shutdown()
        from distributed import Client
        with Client("{dask_cluster}") as client:
            print(len(client.scheduler_info()["workers"]))
    """)
    assert out.split() == ["refused:", "True", "True", "2.0", "2", "2"]


def test_a_wrong_address_says_what_to_check():
    out = run_script("""
        import anyray
        try:
            anyray.init(backend="dask", address="tcp://127.0.0.1:9")
        except ConnectionError as exc:
            print("ConnectionError", "tcp://127.0.0.1:9" in str(exc))
    """)
    assert out.split() == ["ConnectionError", "True"]


def test_a_named_actor_made_inside_a_task_ends_with_its_job(dask_cluster):
    make = f"""
        import anyray
        anyray.init(backend="dask", address="{dask_cluster}", namespace="shared")

        @anyray.remote
        class Named:
            def ping(self):
                return "pong"

        @anyray.remote
        def make():
            Named.options(name="made-in-a-task").remote()
            return anyray.get(anyray.get_actor("made-in-a-task").ping.remote())

        print(anyray.get(make.remote()))
        anyray.shutdown()
    """
    look = f"""
        import anyray
        anyray.init(backend="dask", address="{dask_cluster}", namespace="shared")
        try:
            anyray.get_actor("made-in-a-task")
            print("still there")
        except ValueError:
            print("gone")
        anyray.shutdown()
    """
    assert run_script(make).split() == ["pong"]
    assert run_script(look).split() == ["gone"]


def test_jobs_sharing_a_cluster_each_see_their_own_namespace(dask_cluster):
    code = """
        import sys, time, anyray
        ns = sys.argv[1]
        anyray.init(backend="dask", address="{address}", namespace=ns)

        @anyray.remote
        class Mine:
            def ns(self):
                return ns

        Mine.options(name="mine").remote()

        @anyray.remote
        def look():
            out = []
            for _ in range(20):  # while the other job's tasks run on the same worker
                out.append(anyray.get(anyray.get_actor("mine").ns.remote()))
                time.sleep(0.05)
            return set(out)

        print(sorted(anyray.get([look.remote() for _ in range(2)])[0]))
        anyray.shutdown()
    """.replace("{address}", dask_cluster)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"anyray_dask_jobs_{os.getpid()}.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(code))
    try:
        procs = [subprocess.Popen([sys.executable, path, ns], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for ns in ("job-a", "job-b")]
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        os.remove(path)
    assert [o.strip() for o, _ in outs] == ["['job-a']", "['job-b']"], [e[-2000:] for _, e in outs]


# -- crashes of real worker processes -------------------------------------------------------------------------


def test_a_task_whose_worker_process_dies_runs_again(session, tmp_path):
    marker = tmp_path / "crashed-once"

    @anyray.remote
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)  # the nanny starts a new worker; Dask runs the task again
        return os.getpid()

    pid = anyray.get(crash_once.remote(str(marker)), timeout=120)
    assert marker.exists() and pid != os.getpid()


def test_an_actor_whose_worker_process_dies_stays_dead(session):
    @anyray.remote
    class Keeper:
        def __init__(self):
            self.calls = 0

        def call(self):
            self.calls += 1
            return self.calls, os.getpid()

    keeper = Keeper.remote()
    calls, pid = anyray.get(keeper.call.remote(), timeout=60)
    assert calls == 1
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError):
        anyray.get(keeper.call.remote(), timeout=120)  # not a fresh actor made again by Dask

    @anyray.remote
    def alive():
        return "yes"

    assert anyray.get(alive.remote(), timeout=120) == "yes"


# -- Dask-specific edges --------------------------------------------------------------------------------------


def test_a_call_whose_argument_was_cancelled_does_not_hold_up_the_callers_next_calls(session):
    @anyray.remote
    def slow():
        time.sleep(60)

    @anyray.remote
    class Echo:
        def echo(self, x=None):
            return "echoed"

    echo = Echo.remote()
    pending = slow.remote()
    blocked = echo.echo.remote(pending)
    anyray.cancel(pending)
    assert anyray.get(echo.echo.remote(), timeout=30) == "echoed"
    with pytest.raises(TaskCancelledError):
        anyray.get(blocked, timeout=30)


def test_a_ref_nested_in_arguments_outlives_the_callers_copy(session):
    @anyray.remote
    def read_later(box):
        time.sleep(1.0)  # the caller's ref is gone by then
        return anyray.get(box[0])

    inner = anyray.put("kept")
    ref = read_later.remote([inner])
    del inner
    assert anyray.get(ref, timeout=60) == "kept"


def test_a_ref_nested_in_a_put_value_outlives_the_callers_copy(session):
    @anyray.remote
    def make():
        return "made"

    inner = make.remote()
    box = anyray.put([inner])
    del inner
    time.sleep(1.0)
    assert anyray.get(anyray.get(box)[0], timeout=60) == "made"


def test_large_arguments_do_not_travel_inside_the_task_graph(session):
    import warnings

    import numpy as np

    @anyray.remote
    def total(array):
        return float(array.sum())

    array = np.ones(4_000_000)  # 32 MB: Dask warns about a large graph when it is sent inside one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = total.remote(array)
    array[:] = 0  # the task sees the array as it was at the call
    assert anyray.get(ref, timeout=120) == 4_000_000.0


class TestDaskMetadataStore(MetadataStoreContract):
    """The metadata store on the Dask scheduler keeps the port's contract."""

    watch_poll = 0.1  # anyray_dask.metadata.POLL

    @pytest.fixture
    def store(self, session, key_prefix):
        store = current_runtime().backend.metadata
        yield store
        store.delete_prefix(key_prefix)
