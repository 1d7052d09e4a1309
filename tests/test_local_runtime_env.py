"""A task's or actor's own runtime_env on the local backend: threads of one process, one environment at a time.

What only the local backend makes observable: work of its own environment never runs while the job's work
does (and the reverse), a task waiting for its turn can be cancelled, the setup hook runs once per
environment, two environments' modules of one name stay apart, and ``breakpoint()`` in such a task sees its
environment. (What holds on every backend is in conformance_tests/test_runtime_env.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import anyray
from anyray.exceptions import TaskCancelledError

TIMEOUT = 60

_log: list = []                 # what the tasks below did, in order (module level: shared with the tasks)
_release = threading.Event()    # lets the job's task below finish
_hook_runs: list = []


@pytest.fixture
def local():
    _log.clear()
    _hook_runs.clear()
    _release.clear()
    anyray.init(backend="local", num_cpus=4)
    yield
    _release.set()
    anyray.shutdown()


@anyray.remote
def held(name):
    """Runs until the test sets ``_release`` (a plain wait: it holds its environment's turn meanwhile)."""
    _log.append(("start", name, os.environ.get("RENV_LOCAL_OWN")))
    _release.wait(TIMEOUT)
    _log.append(("end", name))
    return name


@anyray.remote
def logged(name):
    _log.append(("start", name, os.environ.get("RENV_LOCAL_OWN")))
    return os.environ.get("RENV_LOCAL_OWN")


def _count_hook():
    _hook_runs.append(os.environ.get("RENV_LOCAL_OWN"))
    os.environ["RENV_LOCAL_HOOKED"] = "yes"


@anyray.remote
def hooked():
    return os.environ.get("RENV_LOCAL_HOOKED")


def _wait_for(condition) -> None:
    done = threading.Event()
    for _ in range(TIMEOUT * 100):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("timed out")


def test_own_environment_work_waits_for_the_jobs_running_work_and_then_runs(local):
    job = held.remote("job")
    _wait_for(lambda: ("start", "job", None) in _log)
    own = logged.options(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "own"}}).remote("own")
    ready, _ = anyray.wait([own], timeout=0.3)
    assert not ready and [entry[1] for entry in _log] == ["job"]  # it waits for the job's task to end
    _release.set()
    assert anyray.get([job, own], timeout=TIMEOUT) == ["job", "own"]
    assert _log == [("start", "job", None), ("end", "job"), ("start", "own", "own")]
    assert "RENV_LOCAL_OWN" not in os.environ


def test_the_jobs_work_waits_for_own_environment_work(local):
    own = held.options(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "own"}}).remote("own")
    _wait_for(lambda: ("start", "own", "own") in _log)
    assert os.environ.get("RENV_LOCAL_OWN") == "own"  # the driver's thread is not held back: it sees it
    job = logged.remote("job")
    ready, _ = anyray.wait([job], timeout=0.3)
    assert not ready
    _release.set()
    assert anyray.get([own, job], timeout=TIMEOUT) == ["own", None]
    assert _log[-1] == ("start", "job", None) and "RENV_LOCAL_OWN" not in os.environ


def test_a_task_waiting_for_its_environments_turn_can_be_cancelled(local):
    job = held.remote("job")
    _wait_for(lambda: ("start", "job", None) in _log)
    own = logged.options(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "own"}})
    waiting = own.remote("cancelled")
    anyray.wait([waiting], timeout=0.2)
    anyray.cancel(waiting)
    with pytest.raises(TaskCancelledError):
        anyray.get(waiting, timeout=TIMEOUT)
    _release.set()
    assert anyray.get([job, own.remote("next")], timeout=TIMEOUT) == ["job", "own"]  # the lock is whole
    assert ("start", "cancelled", "own") not in _log


def test_the_setup_hook_runs_once_per_environment_and_what_it_set_comes_and_goes_with_it(local):
    first = hooked.options(runtime_env={"worker_process_setup_hook": _count_hook,
                                        "env_vars": {"RENV_LOCAL_OWN": "1"}})
    second = hooked.options(runtime_env={"worker_process_setup_hook": _count_hook,
                                         "env_vars": {"RENV_LOCAL_OWN": "2"}})
    for _ in range(3):
        assert anyray.get([first.remote(), hooked.remote(), second.remote()], timeout=TIMEOUT) == ["yes", None, "yes"]
        assert "RENV_LOCAL_HOOKED" not in os.environ
    assert sorted(_hook_runs) == ["1", "2"]


def test_two_environments_modules_of_one_name_stay_apart(local, tmp_path):
    folders = []
    for value in ("one", "two"):
        folder = tmp_path / value
        folder.mkdir()
        (folder / "renv_local_same.py").write_text(f"VALUE = {value!r}\n")
        folders.append(str(folder))

    @anyray.remote
    def value():
        import renv_local_same

        return renv_local_same.VALUE

    envs = [value.options(runtime_env={"working_dir": folders[0]}),
            value.options(runtime_env={"py_modules": [os.path.join(folders[1], "renv_local_same.py")]})]
    for _ in range(2):
        assert anyray.get([envs[0].remote(), envs[1].remote()], timeout=TIMEOUT) == ["one", "two"]
    assert "renv_local_same" not in sys.modules
    with pytest.raises(anyray.exceptions.TaskError, match="No module named 'renv_local_same'"):
        anyray.get(value.remote(), timeout=TIMEOUT)


def test_an_actor_whose_call_waits_for_a_task_of_another_environment_finishes(local):
    @anyray.remote(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "actor"}})
    class Caller:
        def call(self):
            child = logged.options(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "child"}}).remote("child")
            return anyray.get(child), os.environ.get("RENV_LOCAL_OWN")

    caller = Caller.remote()
    assert anyray.get([caller.call.remote() for _ in range(3)], timeout=TIMEOUT) == [("child", "actor")] * 3


SCRIPT = textwrap.dedent("""
    import os
    import anyray

    anyray.init(backend="local")

    @anyray.remote(runtime_env={"env_vars": {"RENV_DEBUG": "in the task"}, "working_dir": WORKING_DIR})
    def task(x):
        y = x * 7
        breakpoint()
        return y

    print("result", anyray.get(task.remote(6)), os.environ.get("RENV_DEBUG"))
    anyray.shutdown()
""")


def test_breakpoint_in_a_task_with_its_own_environment_sees_it(tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "data.txt").write_text("the data")
    script = tmp_path / "debug_me.py"
    script.write_text(SCRIPT.replace("WORKING_DIR", repr(str(folder))))
    env = {"PYTHONBREAKPOINT": "pdb.set_trace", "PATH": "/usr/bin:/bin"}
    commands = "p os.environ['RENV_DEBUG']\np open('data.txt').read()\np y\nc\n"
    proc = subprocess.run([sys.executable, str(script)], input=commands, capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("(Pdb) ", "\n").splitlines()
    assert "'in the task'" in lines and "'the data'" in lines and "42" in lines, proc.stdout
    assert "result 42 None" in lines, proc.stdout


@anyray.remote
def reads(name):
    return os.environ.get(name)


@anyray.remote(runtime_env={"env_vars": {"RENV_MIX": "parent"}})
def waits_for_children():
    children = [reads.options(runtime_env={"env_vars": {"RENV_MIX": f"child-{i % 2}"}}).remote("RENV_MIX")
                for i in range(4)]
    anyray.wait(children[:1])
    return anyray.get(children), os.environ.get("RENV_MIX")


@anyray.remote
class MixedActor:
    def look(self):
        child = reads.options(runtime_env={"env_vars": {"RENV_MIX_CHILD": "c"}}).remote("RENV_MIX")
        return anyray.get(child), os.environ.get("RENV_MIX")


def test_many_waiters_of_several_environments_all_get_their_turn(local):
    actor = MixedActor.options(runtime_env={"env_vars": {"RENV_MIX": "actor"}}).remote()
    for _ in range(100):
        looks = [actor.look.remote() for _ in range(2)]
        plain = [reads.remote("RENV_MIX") for _ in range(3)]
        parents = [waits_for_children.remote() for _ in range(2)]
        assert anyray.get(looks, timeout=TIMEOUT) == [("actor", "actor")] * 2
        assert anyray.get(plain, timeout=TIMEOUT) == [None] * 3
        assert anyray.get(parents, timeout=TIMEOUT) == [(["child-0", "child-1"] * 2, "parent")] * 2


def test_shutdown_puts_the_jobs_environment_back_while_a_task_of_its_own_still_runs(tmp_path):
    _log.clear()
    _release.clear()
    cwd = os.getcwd()
    anyray.init(backend="local", num_cpus=2)
    try:
        held.options(runtime_env={"env_vars": {"RENV_LOCAL_OWN": "own"}, "working_dir": str(tmp_path)}).remote("own")
        _wait_for(lambda: ("start", "own", "own") in _log)
        assert os.environ.get("RENV_LOCAL_OWN") == "own"
    finally:
        anyray.shutdown()
    try:
        assert "RENV_LOCAL_OWN" not in os.environ and os.getcwd() == cwd
    finally:
        _release.set()
    _wait_for(lambda: ("end", "own") in _log)
    assert "RENV_LOCAL_OWN" not in os.environ and os.getcwd() == cwd
