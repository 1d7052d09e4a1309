"""Workers forked by the fork server, over an authenticated channel: real processes throughout."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from multiprocessing.connection import AuthenticationError, Client

import psutil
import pytest

from anyray.adapters.node.pool import WorkerPool
from anyray.adapters.node.session import Session

TIMEOUT = 60  # generous: the machine may be busy


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def session():
    s = Session()
    yield s
    s.close()


@pytest.fixture
def pool(session):
    exits = []
    died = threading.Event()

    def on_exit(handle):
        exits.append(handle)
        died.set()

    p = WorkerPool(session, on_exit=on_exit)
    p.exits, p.died = exits, died
    yield p
    p.close()


def test_two_workers_run_functions_in_their_own_processes(pool):
    a = pool.start_worker()
    b = pool.start_worker({"ANYRAY_TEST_FLAG": "b"})
    assert a.wait_ready(TIMEOUT) and b.wait_ready(TIMEOUT)
    pids = {a.call(os.getpid), b.call(os.getpid)}
    assert pids == {a.pid, b.pid} and len(pids) == 2 and os.getpid() not in pids
    assert b.call(lambda: os.environ.get("ANYRAY_TEST_FLAG")) == "b"
    assert a.call(lambda: os.environ.get("ANYRAY_TEST_FLAG")) is None
    with pytest.raises(ZeroDivisionError):
        a.call(lambda: 1 / 0)
    assert a.call(lambda x, y=1: x + y, 2, y=3) == 5  # the worker goes on after an error


def test_a_wrong_secret_is_refused_and_the_pool_keeps_working(pool):
    first = pool.start_worker()
    assert first.wait_ready(TIMEOUT)
    silent = socket.socket(socket.AF_UNIX)  # connects and never answers the challenge
    silent.connect(pool.address)
    with pytest.raises(AuthenticationError):
        Client(pool.address, family="AF_UNIX", authkey=b"not the secret")
    assert first.call(os.getpid) == first.pid
    second = pool.start_worker()
    assert second.wait_ready(TIMEOUT) and second.call(os.getpid) == second.pid
    pool.close()  # does not hang on the silent peer
    silent.close()


def test_a_killed_worker_is_reported_dead_and_a_new_one_starts(pool):
    worker = pool.start_worker()
    assert worker.wait_ready(TIMEOUT)
    os.kill(worker.pid, signal.SIGKILL)
    assert pool.died.wait(TIMEOUT)
    assert pool.exits == [worker] and worker.exit.returncode == -signal.SIGKILL
    assert "SIGKILL" in worker.exit.reason and worker not in pool.workers
    replacement = pool.start_worker()
    assert replacement.wait_ready(TIMEOUT) and replacement.call(os.getpid) == replacement.pid


def test_a_call_in_flight_fails_when_its_worker_dies(pool):
    from anyray.exceptions import WorkerCrashedError

    worker = pool.start_worker()
    pending = worker.call_async(time.sleep, 600)
    assert worker.wait_ready(TIMEOUT)
    worker.kill()
    with pytest.raises(WorkerCrashedError, match="killed by SIGKILL"):
        pending.result(TIMEOUT)
    with pytest.raises(WorkerCrashedError):
        worker.call(os.getpid)


def test_killing_the_driver_takes_the_fork_server_workers_and_session_with_it():
    code = textwrap.dedent("""
        import time
        from anyray.adapters.node.session import Session
        from anyray.adapters.node.pool import WorkerPool
        session = Session()
        pool = WorkerPool(session)
        workers = [pool.start_worker(), pool.start_worker()]
        assert all(w.wait_ready(60) for w in workers) and pool.wait_server(60)
        print(pool.server_pid, *[w.pid for w in workers], session.path, flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline().split()
        assert len(line) == 4, line
        *pids, path = line
        pids = [int(p) for p in pids]
        assert os.path.isdir(path) and not any(gone(p) for p in pids)
        driver.kill()
        driver.wait(TIMEOUT)
        assert wait_until(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]
        assert wait_until(lambda: not os.path.exists(path))
    finally:
        driver.kill()
        driver.stdout.close()


def test_close_stops_every_process_it_started(session):
    pool = WorkerPool(session)
    workers = [pool.start_worker(), pool.start_worker()]
    assert all(w.wait_ready(TIMEOUT) for w in workers) and pool.wait_server(TIMEOUT)
    pids = [pool.server_pid] + [w.pid for w in workers]
    pool.close()
    assert wait_until(lambda: all(gone(p) for p in pids))
    assert all(not w.alive for w in workers)
    assert os.path.isdir(session.path) and not os.path.exists(pool.address)  # the session is its owner's
    pool.close()  # idempotent


def test_close_right_after_creation_leaves_nothing_behind(session):
    pool = WorkerPool(session)
    worker = pool.start_worker()
    server = pool._proc.pid
    pool.close()
    assert gone(server) and not worker.alive
    assert worker.pid is None or wait_until(lambda: gone(worker.pid))


def test_the_secret_stays_out_of_argv_environment_and_reprs(pool, session):
    worker = pool.start_worker()
    assert worker.wait_ready(TIMEOUT) and pool.wait_server(TIMEOUT)
    secret = session.secret.hex()
    for pid in (pool.server_pid, worker.pid):
        proc = psutil.Process(pid)
        assert secret not in " ".join(proc.cmdline())
        assert all(secret not in v for v in proc.environ().values())
    assert secret not in repr(pool) + repr(worker)


def test_a_worker_told_to_exit_is_reported_with_its_code(pool):
    from anyray.adapters.node.messages import EXIT

    worker = pool.start_worker()
    assert worker.wait_ready(TIMEOUT)
    worker.send(EXIT)
    assert pool.died.wait(TIMEOUT) and worker.exit.returncode == 0


def test_workers_die_with_the_fork_server_and_are_reported(pool):
    workers = [pool.start_worker(), pool.start_worker()]
    assert all(w.wait_ready(TIMEOUT) for w in workers) and pool.wait_server(TIMEOUT)
    assert psutil.Process(pool.server_pid).num_threads() == 1  # forking from it is safe only so
    os.kill(pool.server_pid, signal.SIGKILL)
    assert wait_until(lambda: all(gone(w.pid) for w in workers))  # PR_SET_PDEATHSIG
    assert wait_until(lambda: len(pool.exits) == 2) and not pool.workers
    with pytest.raises(Exception, match="fork server"):
        pool.start_worker()


def test_a_node_worker_logs_a_message_it_has_no_handler_for_and_goes_on():
    """The worker dispatches by its tag table: an unknown tag is named in a log line, and the next task runs."""
    code = textwrap.dedent("""
        import os
        import anyray
        from anyray.api import _runtime

        anyray.init(backend="multiprocess", num_cpus=1)
        pid = anyray.remote(lambda: os.getpid())
        first = anyray.get(pid.remote(), timeout=60)
        (worker,) = [w for w in _runtime().scheduler.workers.workers if w.pid == first]
        worker.send(15)  # a tag of the task protocol's range that nothing uses
        print("same worker:", anyray.get(pid.remote(), timeout=60) == first, flush=True)
        anyray.shutdown()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT * 2)
    assert done.returncode == 0, done.stderr
    assert "same worker: True" in done.stdout
    assert "a worker got a message it has no handler for (tag 15)" in done.stderr
