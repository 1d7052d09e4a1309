"""``runtime_env``: the job's (``init``) and a task's or actor's own (``@remote``, ``.options``).

Proves, as Ray 2.x behaves: the job's ``env_vars`` reach every task and show in
``get_runtime_context().runtime_env``; a task's or actor's environment is merged with the job's (its
fields replace the job's, ``env_vars`` merged name by name) and inherited by the tasks it starts; a
``working_dir`` (a folder or a .zip) is the task's working directory and importable, without what
``excludes`` names; ``py_modules`` (a folder, a .py file, a .whl) import; ``worker_process_setup_hook`` runs
before the first task; workers of two environments are never shared; work of two environments (tasks, sync
and async actors, async tasks) each sees only its own, and the job's tasks and the driver see none of it; a
task or actor waiting for children of other environments finishes and finds its own again; bad input (an
unknown field, an env var that is not a string, a missing working_dir) is refused at the call. On a cluster,
the working_dir reaches every node. (Ray takes local folders and callable hooks in the job's environment only,
so these are tested there; anyray's built-in backends take them per task too: tests/test_runtime_env.py.)
"""

from __future__ import annotations

import os
import zipfile

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Arrivals, hold_until_all_arrive
from anyray.exceptions import RuntimeEnvSetupError
from anyray.runtime_env import RuntimeEnv, RuntimeEnvConfig

per_task = pytest.mark.requires("runtime_env")


@anyray.remote
def env_var(name):
    return os.environ.get(name)


@anyray.remote
def where():
    return os.getcwd(), os.getpid()


@anyray.remote
def read(path):
    with open(path) as file:
        return file.read()


@anyray.remote
def import_value(module):
    import importlib

    return importlib.import_module(module).VALUE


@anyray.remote
def context_env_vars():
    return dict(anyray.get_runtime_context().runtime_env.get("env_vars") or {})


@pytest.fixture
def folder(tmp_path):
    """A working_dir: a data file, a module, a log to exclude and a folder to exclude."""
    root = tmp_path / "project"
    (root / "cache").mkdir(parents=True)
    (root / "data.txt").write_text("the data")
    (root / "wd_module_renv.py").write_text("VALUE = 'from the working_dir'\n")
    (root / "debug.log").write_text("excluded")
    (root / "cache" / "big.bin").write_text("excluded")
    return root


# -- the job's environment ---------------------------------------------------------


def test_the_jobs_env_vars_reach_every_task_and_the_context(isolated_runtime):
    anyray.init(**isolated_runtime, runtime_env={"env_vars": {"RENV_JOB": "job-value"}})
    assert anyray.get(env_var.remote("RENV_JOB"), timeout=DEADLINE) == "job-value"
    assert anyray.get_runtime_context().runtime_env["env_vars"] == {"RENV_JOB": "job-value"}
    assert anyray.get(context_env_vars.remote(), timeout=DEADLINE) == {"RENV_JOB": "job-value"}


def test_the_jobs_working_dir_is_importable_in_tasks(isolated_runtime, folder):
    anyray.init(**isolated_runtime, runtime_env={"working_dir": str(folder)})
    assert anyray.get(import_value.remote("wd_module_renv"), timeout=DEADLINE) == "from the working_dir"
    assert anyray.get(read.remote("data.txt"), timeout=DEADLINE) == "the data"


# -- a task's and an actor's own ---------------------------------------------------------


@per_task
def test_a_tasks_env_vars_merge_with_the_jobs_name_by_name(isolated_runtime):
    anyray.init(**isolated_runtime, runtime_env={"env_vars": {"RENV_A": "job", "RENV_B": "job"}})
    task_env = {"env_vars": {"RENV_A": "task"}}
    assert anyray.get(context_env_vars.options(runtime_env=task_env).remote(), timeout=DEADLINE) == \
        {"RENV_A": "task", "RENV_B": "job"}
    values = [env_var.options(runtime_env=task_env).remote(n) for n in ("RENV_A", "RENV_B")]
    assert anyray.get(values, timeout=DEADLINE) == ["task", "job"]
    assert anyray.get(env_var.remote("RENV_A"), timeout=DEADLINE) == "job"  # the job's own tasks keep theirs


@per_task
def test_tasks_started_by_a_task_inherit_its_environment(anyray_session):
    @anyray.remote(runtime_env={"env_vars": {"RENV_PARENT": "parent"}})
    def parent():
        return anyray.get([env_var.remote("RENV_PARENT"),
                           env_var.options(runtime_env={"env_vars": {"RENV_CHILD": "child"}}).remote("RENV_PARENT")])

    assert anyray.get(parent.remote(), timeout=DEADLINE) == ["parent", "parent"]


@per_task
def test_an_actor_runs_in_its_runtime_env(anyray_session):
    @anyray.remote
    class Reader:
        def get(self, name):
            return os.environ.get(name)

    reader = Reader.options(runtime_env=RuntimeEnv(env_vars={"RENV_ACTOR": "actor"})).remote()
    assert anyray.get(reader.get.remote("RENV_ACTOR"), timeout=DEADLINE) == "actor"


def test_the_jobs_working_dir_is_the_tasks_cwd_without_what_excludes_names(isolated_runtime, folder):
    anyray.init(**isolated_runtime, runtime_env={"working_dir": str(folder), "excludes": ["*.log", "cache"]})

    @anyray.remote
    def look():
        return sorted(os.listdir(".")), open("data.txt").read(), os.getcwd()

    listing, data, cwd = anyray.get(look.remote(), timeout=DEADLINE)
    assert data == "the data"
    assert "data.txt" in listing and "wd_module_renv.py" in listing
    assert "debug.log" not in listing and "cache" not in listing
    assert os.path.realpath(cwd) != os.path.realpath(str(folder))  # a copy, not the folder itself


def test_a_zipped_working_dir_is_unpacked(isolated_runtime, folder, tmp_path):
    archive = tmp_path / "project.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("data.txt", "wd_module_renv.py"):
            zf.write(folder / name, name)
    anyray.init(**isolated_runtime, runtime_env={"working_dir": str(archive)})
    assert anyray.get(read.remote("data.txt"), timeout=DEADLINE) == "the data"


def _modules(tmp_path) -> list[str]:
    """A package folder, a module file, and a pure-Python wheel."""
    package = tmp_path / "renv_pkg_folder"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 'folder'\n")
    module = tmp_path / "renv_pkg_file.py"
    module.write_text("VALUE = 'file'\n")
    wheel = tmp_path / "renv_pkg_whl-1.0-py3-none-any.whl"
    info = "renv_pkg_whl-1.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("renv_pkg_whl/__init__.py", "VALUE = 'wheel'\n")
        zf.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: renv-pkg-whl\nVersion: 1.0\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return [str(package), str(module), str(wheel)]


def test_py_modules_folders_files_and_wheels_import(isolated_runtime, tmp_path):
    anyray.init(**isolated_runtime, runtime_env={"py_modules": _modules(tmp_path)})

    @anyray.remote
    def values():
        return [__import__(name).VALUE for name in ("renv_pkg_folder", "renv_pkg_file", "renv_pkg_whl")]

    assert anyray.get(values.remote(), timeout=DEADLINE) == ["folder", "file", "wheel"]


def test_the_setup_hook_runs_before_the_first_task(isolated_runtime):
    def set_hook_variable():  # defined here, so it travels by value (workers need not import this module)
        os.environ["RENV_HOOK_RAN"] = "yes"

    anyray.init(**isolated_runtime, runtime_env={"worker_process_setup_hook": set_hook_variable})
    assert anyray.get(env_var.remote("RENV_HOOK_RAN"), timeout=DEADLINE) == "yes"


@per_task
@pytest.mark.requires("processes")
def test_workers_of_two_environments_are_never_shared(anyray_session):
    first, second = {"env_vars": {"RENV_POOL": "1"}}, {"env_vars": {"RENV_POOL": "2"}}
    for _ in range(2):
        pids_first = {pid for _, pid in anyray.get([where.options(runtime_env=first).remote() for _ in range(4)],
                                                   timeout=DEADLINE)}
        pids_second = {pid for _, pid in anyray.get([where.options(runtime_env=second).remote() for _ in range(4)],
                                                    timeout=DEADLINE)}
        assert not pids_first & pids_second
    assert anyray.get([env_var.options(runtime_env=second).remote("RENV_POOL")] * 1, timeout=DEADLINE) == ["2"]


@anyray.remote
def sides():
    """What a task of one of the two environments below sees, read twice with a pause between."""
    import time

    first = os.environ.get("RENV_SIDE")
    time.sleep(0.02)
    return first, os.environ.get("RENV_SIDE"), os.environ.get("RENV_ONLY_A"), os.environ.get("RENV_ONLY_B")


@per_task
def test_tasks_of_two_environments_each_see_only_their_own(anyray_session):
    side_a = {"env_vars": {"RENV_SIDE": "a", "RENV_ONLY_A": "1"}}
    side_b = {"env_vars": {"RENV_SIDE": "b", "RENV_ONLY_B": "1"}}
    refs = [sides.options(runtime_env=side_a if i % 2 == 0 else side_b).remote() for i in range(8)]
    plain = [sides.remote() for _ in range(2)]
    results = anyray.get(refs, timeout=DEADLINE)
    assert results == [("a", "a", "1", None) if i % 2 == 0 else ("b", "b", None, "1") for i in range(8)]
    assert anyray.get(plain, timeout=DEADLINE) == [(None, None, None, None)] * 2
    assert "RENV_SIDE" not in os.environ  # the driver's own environment is its own


@per_task
def test_a_task_waiting_for_children_of_other_environments_finishes(anyray_session):
    @anyray.remote(runtime_env={"env_vars": {"RENV_WAIT": "parent", "RENV_WAIT_PARENT": "yes"}})
    def parent():
        before = os.environ.get("RENV_WAIT")
        children = [env_var.options(runtime_env={"env_vars": {"RENV_WAIT": f"child-{i}"}}).remote("RENV_WAIT")
                    for i in range(3)]
        ready, _ = anyray.wait(children[:1], timeout=DEADLINE)
        during = os.environ.get("RENV_WAIT")
        inherited = env_var.options(runtime_env={"env_vars": {"RENV_WAIT": "other"}}).remote("RENV_WAIT_PARENT")
        values = anyray.get(children + [inherited])
        return before, len(ready), during, values, os.environ.get("RENV_WAIT")

    assert anyray.get(parent.remote(), timeout=DEADLINE) == \
        ("parent", 1, "parent", ["child-0", "child-1", "child-2", "yes"], "parent")


@per_task
def test_an_actor_runs_each_call_in_its_environment_and_the_jobs_tasks_do_not_see_it(anyray_session):
    @anyray.remote
    class Holder:
        def __init__(self):
            self.at_start = os.environ.get("RENV_HOLDER")

        def look(self):
            child = env_var.options(runtime_env={"env_vars": {"RENV_HOLDER_CHILD": "c"}}).remote("RENV_HOLDER")
            context = anyray.get_runtime_context().runtime_env.get("env_vars") or {}
            return self.at_start, anyray.get(child), os.environ.get("RENV_HOLDER"), context.get("RENV_HOLDER")

    holder = Holder.options(runtime_env={"env_vars": {"RENV_HOLDER": "held"}}).remote()
    looks = [holder.look.remote() for _ in range(3)]
    plain = [env_var.remote("RENV_HOLDER") for _ in range(3)]
    assert anyray.get(looks, timeout=DEADLINE) == [("held", "held", "held", "held")] * 3
    assert anyray.get(plain, timeout=DEADLINE) == [None] * 3
    assert "RENV_HOLDER" not in os.environ


@per_task
def test_an_async_actor_keeps_its_environment_across_awaits(anyray_session):
    @anyray.remote
    class Waiter:
        async def look(self, pause):
            import asyncio

            first = os.environ.get("RENV_ASYNC")
            await asyncio.sleep(pause)
            return first, os.environ.get("RENV_ASYNC")

    waiter = Waiter.options(runtime_env={"env_vars": {"RENV_ASYNC": "async"}}, max_concurrency=4).remote()
    looks = [waiter.look.remote(0.05) for _ in range(4)]
    others = [env_var.options(runtime_env={"env_vars": {"RENV_ASYNC": "other"}}).remote("RENV_ASYNC")
              for _ in range(4)]
    assert anyray.get(looks, timeout=DEADLINE) == [("async", "async")] * 4
    assert anyray.get(others, timeout=DEADLINE) == ["other"] * 4


@per_task
def test_an_async_task_awaiting_work_of_other_environments_finishes(anyray_session):
    @anyray.remote(runtime_env={"env_vars": {"RENV_ASYNC_TASK": "parent"}})
    async def parent():
        child = env_var.options(runtime_env={"env_vars": {"RENV_ASYNC_TASK": "child"}}).remote("RENV_ASYNC_TASK")
        plain = where.remote()
        values = [await child, (await plain)[1] > 0]
        return values + [os.environ.get("RENV_ASYNC_TASK")]

    assert anyray.get(parent.remote(), timeout=DEADLINE) == ["child", True, "parent"]


# -- the classes and bad input ---------------------------------------------------------


def test_runtime_env_and_its_config_are_dicts_as_in_ray():
    env = RuntimeEnv(env_vars={"A": "1"}, config=RuntimeEnvConfig(setup_timeout_seconds=30, eager_install=False))
    assert env["env_vars"] == {"A": "1"}
    assert env["config"]["setup_timeout_seconds"] == 30 and env["config"]["eager_install"] is False
    with pytest.raises(ValueError, match="setup_timeout_seconds"):
        RuntimeEnvConfig(setup_timeout_seconds=0)
    with pytest.raises(TypeError, match="eager_install"):
        RuntimeEnvConfig(eager_install="yes")


def test_an_unknown_field_is_refused_at_the_call(anyray_session):
    with pytest.raises(ValueError, match="env_var"):
        env_var.options(runtime_env={"env_var": {"A": "1"}})


def test_an_env_var_that_is_not_a_string_is_refused(anyray_session):
    with pytest.raises(TypeError, match=r"Dict\[str, str\]"):
        env_var.options(runtime_env={"env_vars": {"A": 1}})


def test_a_missing_working_dir_is_refused(anyray_session, tmp_path):
    with pytest.raises(ValueError, match="is not a valid path"):
        env_var.options(runtime_env={"working_dir": str(tmp_path / "missing")})


def test_init_refuses_a_bad_runtime_env(isolated_runtime):
    with pytest.raises(TypeError, match=r"Dict\[str, str\]"):
        anyray.init(**isolated_runtime, runtime_env={"env_vars": {"A": 1}})
    assert not anyray.is_initialized()


# -- a cluster ---------------------------------------------------------------------


@pytest.mark.requires("multi_node")
def test_the_working_dir_reaches_every_node(isolated_runtime, folder):
    anyray.init(**isolated_runtime, runtime_env={"working_dir": str(folder)})
    alive = {node["NodeID"] for node in anyray.nodes() if node["Alive"]}
    if len(alive) < 2:
        pytest.skip("needs a cluster of two nodes or more")
    cpus = int(anyray.cluster_resources()["CPU"])
    arrivals = Arrivals.remote()

    @anyray.remote(num_cpus=1)
    def probe(arrivals):
        hold_until_all_arrive(arrivals, cpus)  # every CPU of the cluster is held by a probe: all nodes run one
        return anyray.get_runtime_context().get_node_id(), open("data.txt").read()

    probes = [probe.remote(arrivals) for _ in range(cpus)]
    results = anyray.get(probes, timeout=DEADLINE * 2)
    assert {node for node, _ in results} == alive
    assert {data for _, data in results} == {"the data"}


# -- pip: a Python environment per requirement set (kept cheap: a local wheel, no package index) ------------

pip_env = pytest.mark.requires("runtime_env_pip")


def _local_wheel(directory) -> str:
    """A pure-Python wheel of ``renv_pip_probe`` 1.0 in ``directory``, for pip to install with no index."""
    import base64
    import hashlib

    directory.mkdir(exist_ok=True)
    info = "renv_pip_probe-1.0.dist-info"
    files = {"renv_pip_probe/__init__.py": "VALUE = 'installed by pip'\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: renv-pip-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(directory / "renv_pip_probe-1.0-py3-none-any.whl", "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return str(directory)


@per_task
@pip_env
def test_a_pip_package_is_installed_for_the_task_and_a_missing_one_fails_it(anyray_session, tmp_path):
    wheels = _local_wheel(tmp_path / "wheels")
    offline = ["--no-index", "--find-links", wheels]

    @anyray.remote
    def probe():
        import renv_pip_probe

        return renv_pip_probe.VALUE

    good = {"pip": {"packages": ["renv-pip-probe==1.0"], "pip_install_options": offline}}
    assert anyray.get(probe.options(runtime_env=good).remote(), timeout=DEADLINE * 10) == "installed by pip"
    assert anyray.get(probe.options(runtime_env=good).remote(), timeout=DEADLINE) == "installed by pip"  # reused
    bad = {"pip": {"packages": ["renv-no-such-package-anywhere==9.9"], "pip_install_options": offline}}
    with pytest.raises(RuntimeEnvSetupError):
        anyray.get(probe.options(runtime_env=bad).remote(), timeout=DEADLINE * 10)
    assert anyray.get(env_var.remote("PATH"), timeout=DEADLINE) is not None  # the next task runs
    assert anyray.get(probe.options(runtime_env=good).remote(), timeout=DEADLINE) == "installed by pip"
