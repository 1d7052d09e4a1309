"""runtime_env on the built-in backends, beyond what Ray takes: a task's or actor's own local folders and
setup hooks (Ray takes them in the job's environment only), packages shipped once per content hash, a
failing hook, the fields the built-in backends refuse, and how the local backend applies the job's
environment to its process. Those of a task's own run on the multiprocess backend (real worker processes) and
on the local one (threads taking turns: tests/test_local_runtime_env.py)."""

from __future__ import annotations

import os
import time
import zipfile

import psutil
import pytest

import anyray
from anyray.exceptions import ActorDiedError, RuntimeEnvSetupError
from anyray.runtime_env import RuntimeEnv, RuntimeEnvConfig, merge, validate

TIMEOUT = 60


@pytest.fixture
def multiprocess():
    anyray.init(backend="multiprocess", num_cpus=2)
    yield
    anyray.shutdown()


@pytest.fixture(params=["multiprocess", "local"])
def built_in(request):
    """Each built-in backend that runs tasks in a runtime_env of their own: worker processes, or threads."""
    anyray.init(backend=request.param, num_cpus=2)
    yield request.param
    anyray.shutdown()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "data.txt").write_text("the data")
    (root / "renv_unit_module.py").write_text("VALUE = 'imported'\n")
    return root


@anyray.remote
def where():
    return os.getcwd(), os.getpid()


@anyray.remote
def env_var(name):
    return os.environ.get(name)


def _hook():
    os.environ["RENV_UNIT_HOOK"] = "ran"


def _failing_hook():
    raise ValueError("this hook fails on purpose")


# -- validation and merging (no backend) ---------------------------------------------------


def test_merge_replaces_fields_and_merges_env_vars_name_by_name():
    parent = {"env_vars": {"A": "p", "B": "p"}, "working_dir": "/p", "py_modules": ["/m"]}
    child = {"env_vars": {"A": "c"}, "working_dir": "/c"}
    assert merge(parent, child) == {"env_vars": {"A": "c", "B": "p"}, "working_dir": "/c", "py_modules": ["/m"]}
    assert merge(None, child) is child and merge(parent, None) is parent and merge(None, None) is None


def test_validation_normalizes_as_ray_does(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# a comment\nsix\n\nsix\n")
    assert validate({"pip": str(requirements)}, "t") == {"pip": {"packages": ["six"], "pip_check": False}}
    assert validate({"env_vars": {}, "py_modules": []}, "t") is None  # empty fields are dropped, as in Ray
    assert validate({"uv": ["six"]}, "t") == {"uv": {"packages": ["six"]}}
    with pytest.raises(ValueError, match="cannot be specified at the same time"):
        validate({"pip": ["six"], "uv": ["six"]}, "t")
    with pytest.raises(ValueError, match="unknown field"):
        validate({"config": {"setup_timeout": 3}}, "t")
    with pytest.raises(TypeError, match="excludes"):
        validate({"excludes": "*.log"}, "t")
    with pytest.raises(ValueError, match="Did you mean 'working_dir'"):
        validate({"workingdir": "."}, "t")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("x")
    with pytest.raises(ValueError, match="not a .zip"):
        validate({"working_dir": str(text_file)}, "t")


def test_runtime_env_round_trips_through_its_text():
    env = RuntimeEnv(env_vars={"A": "1"}, config=RuntimeEnvConfig(setup_timeout_seconds=5))
    again = RuntimeEnv.deserialize(env.serialize())
    assert again["env_vars"] == {"A": "1"} and again["config"]["setup_timeout_seconds"] == 5
    assert env.env_vars() == {"A": "1"} and not env.has_working_dir()


# -- the multiprocess backend ---------------------------------------------------------------


@pytest.mark.parametrize("field, value", [("conda", "env"), ("container", {"image": "x"}), ("image_uri", "x")])
def test_fields_the_built_in_backends_cannot_set_up_are_named(multiprocess, field, value):
    with pytest.raises(ValueError, match=f"'{field}' are not supported by the 'multiprocess' backend"):
        env_var.options(runtime_env={field: value}).remote("X")


def test_a_tasks_own_working_dir_and_modules(built_in, folder, tmp_path):
    package = tmp_path / "renv_unit_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 'package'\n")

    @anyray.remote(runtime_env={"working_dir": str(folder), "py_modules": [str(package)]})
    def look():
        return open("data.txt").read(), __import__("renv_unit_module").VALUE, __import__("renv_unit_pkg").VALUE

    assert anyray.get(look.remote(), timeout=TIMEOUT) == ("the data", "imported", "package")
    with pytest.raises(anyray.exceptions.TaskError, match="No module named 'renv_unit_module'"):
        anyray.get(anyray.remote(lambda: __import__("renv_unit_module")).remote(), timeout=TIMEOUT)


def test_a_folder_is_unpacked_once_per_content(built_in, folder, tmp_path):
    twin = tmp_path / "twin"
    twin.mkdir()
    for name in os.listdir(folder):
        (twin / name).write_bytes((folder / name).read_bytes())
    first = anyray.get(where.options(runtime_env={"working_dir": str(folder)}).remote(), timeout=TIMEOUT)[0]
    same = anyray.get(where.options(runtime_env={"working_dir": str(twin)}).remote(), timeout=TIMEOUT)[0]
    assert first == same  # the same content: one copy on the node
    (twin / "data.txt").write_text("changed")
    changed = anyray.get(where.options(runtime_env={"working_dir": str(twin)}).remote(), timeout=TIMEOUT)[0]
    assert changed != first
    assert open(os.path.join(changed, "data.txt")).read() == "changed"


def test_a_tasks_own_setup_hook_runs_before_it(built_in, tmp_path):
    modules = tmp_path / "hooks"
    (modules / "renv_unit_hooks").mkdir(parents=True)
    (modules / "renv_unit_hooks" / "__init__.py").write_text(
        "import os\n\ndef setup():\n    os.environ['RENV_UNIT_HOOK'] = 'ran'\n")
    by_path = {"py_modules": [str(modules / "renv_unit_hooks")], "worker_process_setup_hook": "renv_unit_hooks.setup"}
    for env in ({"worker_process_setup_hook": _hook}, by_path):
        assert anyray.get(env_var.options(runtime_env=env).remote("RENV_UNIT_HOOK"), timeout=TIMEOUT) == "ran"
    assert anyray.get(env_var.remote("RENV_UNIT_HOOK"), timeout=TIMEOUT) is None  # other workers ran no hook


def test_a_failing_hook_fails_the_task_clearly_and_the_next_task_runs(built_in):
    failing = env_var.options(runtime_env={"worker_process_setup_hook": _failing_hook})
    for _ in range(2):
        with pytest.raises(RuntimeEnvSetupError, match="this hook fails on purpose"):
            anyray.get(failing.remote("X"), timeout=TIMEOUT)
    assert anyray.get(env_var.options(runtime_env={"env_vars": {"OK": "yes"}}).remote("OK"), timeout=TIMEOUT) == "yes"


def test_an_actor_whose_environment_fails_dies_saying_why(built_in):
    @anyray.remote(runtime_env={"worker_process_setup_hook": _failing_hook})
    class Actor:
        def ping(self):
            return "pong"

    with pytest.raises(ActorDiedError, match="(?s)RuntimeEnvSetupError.*this hook fails on purpose"):
        anyray.get(Actor.remote().ping.remote(), timeout=TIMEOUT)


def test_get_runtime_env_string_is_the_environment_as_json(built_in):
    @anyray.remote(runtime_env={"env_vars": {"B": "2", "A": "1"}})
    def text():
        return anyray.get_runtime_context().get_runtime_env_string()

    assert anyray.get(text.remote(), timeout=TIMEOUT) == '{"env_vars":{"A":"1","B":"2"}}'
    assert anyray.get_runtime_context().get_runtime_env_string() == "{}"


# -- the local backend --------------------------------------------------------------------


def test_the_local_backend_applies_the_jobs_environment_to_the_process_and_undoes_it(folder):
    cwd = os.getcwd()
    anyray.init(backend="local", runtime_env={"env_vars": {"RENV_LOCAL": "set"}, "working_dir": str(folder)})
    try:
        assert anyray.get(env_var.remote("RENV_LOCAL")) == "set"
        assert open("data.txt").read() == "the data"  # the process's cwd is the unpacked copy
        job_cwd = os.getcwd()
        own = env_var.options(runtime_env={"env_vars": {"RENV_LOCAL": "other"}})
        assert anyray.get(own.remote("RENV_LOCAL")) == "other"  # a task's own, applied around it
        assert os.environ["RENV_LOCAL"] == "set" and os.getcwd() == job_cwd  # and the job's put back
    finally:
        anyray.shutdown()
    assert "RENV_LOCAL" not in os.environ and os.getcwd() == cwd


def test_a_task_may_have_zipped_modules_of_its_own(built_in, tmp_path):
    archive = tmp_path / "modules.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("renv_unit_zipped/__init__.py", "VALUE = 'zipped'\n")

    @anyray.remote(runtime_env={"py_modules": [str(archive)]})
    def value():
        return __import__("renv_unit_zipped").VALUE

    assert anyray.get(value.remote(), timeout=TIMEOUT) == "zipped"


def test_an_actor_runs_in_its_pip_environment_or_dies_saying_why(multiprocess, tmp_path):
    from anyray.conformance.test_runtime_env import _local_wheel

    offline = ["--no-index", "--find-links", _local_wheel(tmp_path / "wheels")]

    @anyray.remote
    class Probe:
        def value(self):
            import renv_pip_probe

            return renv_pip_probe.VALUE

    good = Probe.options(runtime_env={"pip": {"packages": ["renv-pip-probe"], "pip_install_options": offline}})
    assert anyray.get(good.remote().value.remote(), timeout=TIMEOUT * 5) == "installed by pip"
    bad = Probe.options(runtime_env={"pip": {"packages": ["renv-missing-xyz"], "pip_install_options": offline}})
    with pytest.raises(ActorDiedError, match="RuntimeEnvSetupError"):
        anyray.get(bad.remote().value.remote(), timeout=TIMEOUT * 5)


def test_the_local_backend_refuses_pip_and_uv_naming_the_backends_that_build_them():
    refusal = "'local' backend runs every task and actor in this Python process.*backend='multiprocess'"
    with pytest.raises(ValueError, match=f"init\\(\\): runtime_env 'pip' need.*{refusal}"):
        anyray.init(backend="local", runtime_env={"pip": ["six"]})
    assert not anyray.is_initialized()
    anyray.init(backend="local")
    try:
        with pytest.raises(ValueError, match=f"env_var: runtime_env 'uv' need.*{refusal}"):
            env_var.options(runtime_env={"uv": ["six"]}).remote("X")
    finally:
        anyray.shutdown()


def test_idle_workers_of_other_environments_make_way(multiprocess):
    pids = [anyray.get(where.options(runtime_env={"env_vars": {"RENV_TURN": str(i)}}).remote(), timeout=TIMEOUT)[1]
            for i in range(8)]
    assert len(set(pids)) == 8  # a worker per environment
    kept = max(2, os.cpu_count() or 1) + 1  # the idle ones the node keeps, and the one that ran last

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def alive():
        return [p for p in pids if running(p)]

    deadline = time.monotonic() + TIMEOUT
    while len(alive()) > kept and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(alive()) <= kept


@pytest.mark.parametrize("eager", [True, False])
def test_the_jobs_pip_environment_is_built_at_init_unless_eager_install_is_off(tmp_path, monkeypatch, eager):
    from anyray.adapters.node import python_envs
    from anyray.conformance.test_runtime_env import _local_wheel

    monkeypatch.setenv("ANYRAY_PYTHON_ENVS_DIR", str(tmp_path / "envs"))  # nothing built before
    pip = {"packages": ["renv-pip-probe"], "pip_install_options": ["--no-index", "--find-links",
                                                                    _local_wheel(tmp_path / "wheels")]}
    anyray.init(backend="multiprocess", num_cpus=2, runtime_env={"pip": pip, "config": {"eager_install": eager}})
    try:
        deadline = time.monotonic() + TIMEOUT * 5
        while python_envs.find_env("pip", pip) is None and time.monotonic() < deadline:
            time.sleep(0.1 if eager else 1.0)  # off: nothing builds it, however long we look
            if not eager:
                break
        assert (python_envs.find_env("pip", pip) is not None) is eager  # with no task submitted yet
        assert anyray.get(anyray.remote(lambda: __import__("renv_pip_probe").VALUE).remote(),
                          timeout=TIMEOUT * 5) == "installed by pip"
    finally:
        anyray.shutdown()


def test_unpacked_packages_are_readable_by_this_user_only(multiprocess, folder):
    @anyray.remote
    def where_unpacked():
        return os.getcwd()

    cwd = anyray.get(where_unpacked.options(runtime_env={"working_dir": str(folder)}).remote(), timeout=TIMEOUT)
    assert open(os.path.join(cwd, "data.txt")).read() == "the data"
    assert os.stat(os.path.dirname(cwd)).st_mode & 0o777 == 0o700  # no other user enters the folder
