"""Ray semantics that real programs hit first (issue 12, part 2).

Proves that built-in exceptions with their own allocator (``MemoryError``)
come back as themselves; that ``sys.exit()``/``exit_actor()`` in an actor ends
it; that classes of the driver's ``__main__`` used in options reach the
worker, and any failure to set a task up reaches the caller; that a cancel
of a task blocked in a nested ``get`` or still reading its arguments ends
it without running its body; that NumPy arrays handed out are read-only;
and that concurrent get-or-create of one named actor gives everyone the
same actor.
"""

from __future__ import annotations

import pytest

import anyray
from anyray import exceptions

pytestmark = pytest.mark.usefixtures("anyray_session")


# -- errors ----------------------------------------------------------------------------------------


def test_memory_error_comes_back_as_memory_error():
    @anyray.remote
    def exhaust():
        raise MemoryError("no room for the matrix")

    with pytest.raises(MemoryError, match="no room for the matrix") as info:
        anyray.get(exhaust.remote())
    assert isinstance(info.value, exceptions.RayTaskError)
    assert isinstance(info.value.cause, MemoryError)


def test_builtin_exceptions_with_own_allocators_keep_their_class():
    @anyray.remote
    def fail(kind):
        raise {"recursion": RecursionError, "stop": StopIteration, "key": KeyError}[kind]("deep")

    for kind, cls in (("recursion", RecursionError), ("stop", StopIteration), ("key", KeyError)):
        with pytest.raises(cls) as info:
            anyray.get(fail.remote(kind))
        assert isinstance(info.value, exceptions.RayTaskError)


# -- objects are immutable -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 1_000_000], ids=["small", "large"])
def test_numpy_arrays_handed_out_are_read_only(size):
    np = pytest.importorskip("numpy")

    @anyray.remote
    def writable(array):
        return array.flags.writeable

    @anyray.remote
    def make(n):
        return np.arange(n, dtype=np.float64)

    assert anyray.get(writable.remote(np.zeros(size))) is False  # an argument by value
    assert anyray.get(writable.remote(anyray.put(np.zeros(size)))) is False  # an argument by ref
    assert anyray.get(writable.remote(make.remote(size))) is False  # another task's result
    returned = anyray.get(make.remote(size))
    assert returned.flags.writeable is False
    assert anyray.get(anyray.put(np.zeros(size))).flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        returned[0] = 1.0


# -- programs run as __main__ ----------------------------------------------------------------------

SCRIPT_TIMEOUT = 180.0  # seconds a whole script may take (a fresh runtime, a few tasks); a hang fails


def run_script(tmp_path, init_kwargs, body: str, name: str = "program.py", files: dict | None = None):
    """Run ``body`` as the ``__main__`` of a new driver process with the backend under test.

    ``anyray.init(**INIT)`` in the script starts the backend as this suite does. Returns the
    completed process; a script still running after SCRIPT_TIMEOUT fails the test (a hang)."""
    import json
    import os
    import subprocess
    import sys
    import textwrap

    for filename, text in (files or {}).items():
        (tmp_path / filename).write_text(textwrap.dedent(text))
    script = tmp_path / name
    script.write_text("import json, os\nINIT = json.loads(os.environ['ANYRAY_TEST_INIT'])\n"
                      + textwrap.dedent(body))
    env = dict(os.environ, ANYRAY_TEST_INIT=json.dumps(init_kwargs), PYTHONPATH=str(tmp_path))
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=SCRIPT_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{name} hung: still running after {SCRIPT_TIMEOUT} s; output so far:\n"
                             f"{exc.stdout}\n{exc.stderr}") from None
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_main_module_classes_in_options_reach_the_worker(isolated_runtime, tmp_path):
    done = run_script(tmp_path, isolated_runtime, """
        import anyray
        from anyray.conformance.helpers import Counter

        class Flaky(Exception):
            pass

        class Fatal(Exception):
            pass

        @anyray.remote(max_retries=3, retry_exceptions=[Flaky])
        def third_time_lucky(counter, error):
            if anyray.get(counter.incr.remote()) < 3:
                raise error("not yet")
            return "done"

        @anyray.remote(max_task_retries=3)
        class Service:
            def __init__(self, counter):
                self.counter = counter

            @anyray.method(retry_exceptions=[Flaky])
            def call(self):
                if anyray.get(self.counter.incr.remote()) < 3:
                    raise Flaky("not yet")
                return "served"

        anyray.init(**INIT)
        counter = Counter.remote()
        print("task:", anyray.get(third_time_lucky.remote(counter, Flaky), timeout=60))
        fatal = Counter.remote()
        try:
            anyray.get(third_time_lucky.remote(fatal, Fatal), timeout=60)
        except Fatal:
            print("not retried:", anyray.get(fatal.get.remote(), timeout=60))
        print("method:", anyray.get(Service.remote(Counter.remote()).call.remote(), timeout=60))
        anyray.shutdown()
    """)
    assert "task: done" in done.stdout
    assert "not retried: 1" in done.stdout
    assert "method: served" in done.stdout


def test_a_task_that_cannot_be_set_up_on_its_worker_fails_instead_of_hanging(isolated_runtime, tmp_path,
                                                                            backend_class):
    done = run_script(tmp_path, isolated_runtime, files={"driver_only.py": """
        import sys

        if not sys.argv[0].endswith("program.py"):
            raise ImportError("driver_only imports in the driver alone")

        def helper():
            return "never runs"

        class DriverOnlyError(Exception):
            pass
    """}, body="""
        import anyray
        import driver_only

        class NoLoad:
            def __reduce__(self):
                return (_explode, ())

        def _explode():
            raise RuntimeError("this value cannot be rebuilt")

        @anyray.remote(max_retries=0)
        def run(fn, value=None):
            return fn()

        @anyray.remote(max_retries=1, retry_exceptions=[driver_only.DriverOnlyError])
        def plain():
            return "ran"

        @anyray.remote
        class Holder:
            def __init__(self, value=None):
                self.value = value

            def ping(self):
                return "pong"

        @anyray.remote
        class Picky:
            @anyray.method(retry_exceptions=[driver_only.DriverOnlyError])
            def ping(self):
                return "pong"

        anyray.init(**INIT)
        holder = Holder.remote()
        cases = {
            "function of an unimportable module": lambda: run.remote(driver_only.helper),
            "argument that cannot be rebuilt": lambda: run.remote(print, NoLoad()),
            "option of a class that does not import": lambda: plain.remote(),
            "method option of a class that does not import":
                lambda: holder.ping.options(retry_exceptions=[driver_only.DriverOnlyError]).remote(),
            "method declared with a class that does not import": lambda: Picky.remote().ping.remote(),
            "actor argument that cannot be rebuilt": lambda: Holder.remote(NoLoad()).ping.remote(),
            "remote function of an unimportable module": lambda: anyray.remote(driver_only.helper).remote(),
        }
        for label, submit in cases.items():
            try:
                anyray.get(submit(), timeout=90)
            except anyray.exceptions.GetTimeoutError:
                print(label, "-> HUNG")
            except Exception as exc:
                kind = ("TaskError" if isinstance(exc, anyray.exceptions.RayTaskError) else
                        "ActorDiedError" if isinstance(exc, anyray.exceptions.RayActorError) else type(exc).__name__)
                print(label, "-> raised", kind)
            else:
                print(label, "-> returned")
        print("runtime still works:", anyray.get(holder.ping.remote(), timeout=60))
        anyray.shutdown()
    """)
    outcomes = dict(line.split(" -> ") for line in done.stdout.splitlines() if " -> " in line)
    assert len(outcomes) == 7, done.stdout + done.stderr
    # Values that cannot be rebuilt fail everywhere; a module that imports in the driver alone fails
    # where tasks run in other processes (in-process backends import it as the driver did).
    assert outcomes["argument that cannot be rebuilt"] == "raised TaskError"
    assert outcomes["actor argument that cannot be rebuilt"] == "raised ActorDiedError"
    elsewhere = "processes" in backend_class.capabilities
    for outcome in outcomes.values():
        assert outcome.startswith("raised") if elsewhere else outcome != "HUNG", done.stdout
    assert "runtime still works: pong" in done.stdout


# -- sys.exit and exit_actor -----------------------------------------------------------------------

ACTOR_GONE = (exceptions.ActorDiedError, exceptions.ActorUnavailableError)  # Ray: both are RayActorErrors


@anyray.remote(max_restarts=1)
class Exiter:
    def __init__(self):
        self.calls = 0

    def ping(self):
        self.calls += 1
        return self.calls

    def leave(self, how):
        import sys

        if how == "exit_actor":
            anyray.actor.exit_actor()
        elif how == "builtin":
            exit(3)
        sys.exit(how)




@anyray.remote(max_restarts=1)
class AsyncExiter:
    async def ping(self):
        return 1

    async def leave(self, how):
        anyray.actor.exit_actor()


@pytest.mark.parametrize("kind", ["sync", "threaded", "async"])
def test_exit_actor_ends_actors_of_every_kind(kind):
    actor = {"sync": Exiter.remote, "threaded": Exiter.options(max_concurrency=3).remote,
             "async": AsyncExiter.remote}[kind]()
    assert anyray.get(actor.ping.remote()) == 1
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(actor.leave.remote("exit_actor"))
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(actor.ping.remote())


@pytest.mark.parametrize("how", ["exit_actor", 0])
def test_exit_actor_ends_the_actor_for_good(how):
    actor = Exiter.remote()
    assert anyray.get(actor.ping.remote()) == 1
    with pytest.raises(exceptions.ActorDiedError):
        anyray.get(actor.leave.remote(how))
    for _ in range(2):  # not restarted, whatever max_restarts says
        with pytest.raises(exceptions.ActorDiedError):
            anyray.get(actor.ping.remote())


@pytest.mark.requires("actor_restart")
@pytest.mark.parametrize("how", [1, None, "builtin"])
def test_sys_exit_with_another_code_is_a_crash_and_restarts(how):
    actor = Exiter.remote()
    assert anyray.get(actor.ping.remote()) == 1
    with pytest.raises(ACTOR_GONE):
        anyray.get(actor.leave.remote(how))
    assert _ping_once_back(actor) == 1  # a fresh instance: max_restarts=1 allowed it
    with pytest.raises(ACTOR_GONE):
        anyray.get(actor.leave.remote(how))
    with pytest.raises(exceptions.ActorDiedError):  # restarts used up
        anyray.get(actor.ping.remote())


def _ping_once_back(actor):
    """The first answer of a restarting actor (Ray answers ActorUnavailableError until it is back)."""
    import time

    from anyray.conformance.helpers import DEADLINE

    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            return anyray.get(actor.ping.remote(), timeout=DEADLINE)
        except exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_exit_actor_outside_an_actor_is_a_type_error():
    @anyray.remote
    def not_an_actor():
        anyray.actor.exit_actor()

    with pytest.raises(TypeError, match="exit_actor"):
        anyray.get(not_an_actor.remote())
    with pytest.raises(TypeError, match="exit_actor"):
        anyray.actor.exit_actor()


def test_sys_exit_in_a_task_ends_its_worker_and_retries_run_out(signal):
    from anyray.conformance.helpers import Counter

    attempts = Counter.remote()

    @anyray.remote(max_retries=2)
    def leave(counter):
        import sys

        anyray.get(counter.incr.remote())
        sys.exit(0)

    with pytest.raises(exceptions.WorkerCrashedError):
        anyray.get(leave.remote(attempts))
    assert anyray.get(attempts.get.remote()) == 3  # the first run and two retries


# -- cancel ----------------------------------------------------------------------------------------


@pytest.mark.requires("interrupt_cancel")
def test_cancel_of_a_task_blocked_in_a_nested_get_ends_the_callers_get(signal):
    from anyray.conformance.helpers import DEADLINE

    @anyray.remote
    def outer(sig):
        return anyray.get(sig.wait.remote(4 * DEADLINE))  # outlasts the get below: only the cancel ends it

    ref = outer.remote(signal)
    with pytest.raises(exceptions.GetTimeoutError):
        anyray.get(ref, timeout=0.5)  # it is blocked in its get now (or about to be)
    anyray.cancel(ref)
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)


def _open_gate(reading: str, release: str, deadline: float) -> str:
    """Rebuilds a :class:`Gate`: says it is being read, then waits until the test releases it."""
    import os
    import time

    open(reading, "w").close()
    end = time.monotonic() + deadline
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    return "gate"


class Gate:
    """An argument whose loading in the worker lasts until the test releases it: a task is "still
    reading its arguments" for as long as the test wants."""

    def __init__(self, reading, release, deadline):
        self.files = (str(reading), str(release), deadline)

    def __reduce__(self):
        return _open_gate, self.files


@pytest.mark.requires("interrupt_cancel")  # reading arguments is part of running: a cancel must interrupt it
def test_a_task_cancelled_while_reading_its_arguments_never_runs(tmp_path):
    from anyray.conformance.helpers import DEADLINE, Recorder, wait_until

    recorder = Recorder.remote()

    @anyray.remote(max_retries=0)
    def consume(gate, log):
        anyray.get(log.record.remote("body ran"))
        return gate

    reading, release = tmp_path / "reading", tmp_path / "release"
    ref = consume.remote(Gate(reading, release, 4 * DEADLINE), recorder)
    wait_until(reading.exists, what="the task reading its argument")
    anyray.cancel(ref)
    release.touch()
    with pytest.raises(exceptions.TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
    done = consume.remote("no gate", recorder)  # the worker goes on; what the first would record is in
    assert anyray.get(done, timeout=DEADLINE) == "no gate"
    assert anyray.get(recorder.entries.remote(), timeout=DEADLINE) == ["body ran"]


# -- get-or-create of a named actor ----------------------------------------------------------------


def test_concurrent_get_or_create_gives_everyone_the_same_actor():
    import sys

    from anyray.conformance.helpers import DEADLINE, Counter

    rounds, threads, tasks = 10, 8, 4

    @anyray.remote(num_cpus=0)
    def get_or_create_in_a_task(name):
        actor = Counter.options(name=name, get_if_exists=True, num_cpus=0, lifetime="detached").remote()
        return anyray.get(actor.append.remote("task"), timeout=DEADLINE) and name

    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads of this process (all of the local backend's) interleave finely
    try:
        _race_for_names(rounds, threads, tasks, get_or_create_in_a_task)
    finally:
        sys.setswitchinterval(switching)


def _race_for_names(rounds, threads, tasks, get_or_create_in_a_task):
    import threading
    import uuid

    from anyray.conformance.helpers import DEADLINE, Counter

    for _ in range(rounds):  # each round races for a fresh name
        name = f"shared-{uuid.uuid4().hex[:8]}"
        start = threading.Barrier(threads)
        errors, handles = [], []

        def get_or_create(name=name, start=start, handles=handles, errors=errors):
            try:
                start.wait(DEADLINE)
                actor = Counter.options(name=name, get_if_exists=True, num_cpus=0, lifetime="detached").remote()
                anyray.get(actor.append.remote("thread"), timeout=DEADLINE)
                handles.append(actor)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        task_refs = [get_or_create_in_a_task.remote(name) for _ in range(tasks)]
        pool = [threading.Thread(target=get_or_create) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(DEADLINE)
        assert not errors, errors
        assert anyray.get(task_refs, timeout=DEADLINE) == [name] * tasks
        log = anyray.get(anyray.get_actor(name).get_log.remote(), timeout=DEADLINE)
        assert sorted(log) == ["task"] * tasks + ["thread"] * threads  # one actor saw every call
        assert all(handle == handles[0] for handle in handles)
        anyray.kill(handles[0])  # detached: it outlives the tasks that made it, as Ray requires here
