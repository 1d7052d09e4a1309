"""pip/uv environments (adapters/node/python_envs) and workers started from their interpreters.

Real builds from the package index, kept few: one pip environment for the whole file (built by two processes
at once), one uv environment, and installs that fail. The cache is a temp dir per test session.
"""

import importlib.metadata
import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import anyray
from anyray.adapters.node import python_envs
from anyray.adapters.node.pool import WorkerPool
from anyray.adapters.node.session import Session
from anyray.exceptions import AnyrayError, RuntimeEnvSetupError

TIMEOUT = 120
# Small pure-Python packages: one the node lacks, one it has at another version (the environment's must win).
NEW_PACKAGE, NEW_VERSION = "termcolor", "2.4.0"
PINNED_PACKAGE, PINNED_VERSION = "iniconfig", "2.0.0"  # pytest's own dependency: every test env has it
REQUIREMENTS = [f"{NEW_PACKAGE}=={NEW_VERSION}", f"{PINNED_PACKAGE}=={PINNED_VERSION}"]
MISSING = "anyray-no-such-package-7f3c2a"
SECRET = "s3cr3t-t0ken"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("python_envs") / "cache")


def gone(pid: int) -> bool:
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


def installer_runs(env_dir: str) -> list[str]:
    """The commands the build ran, as its install log records them."""
    with open(os.path.join(env_dir, "install.log")) as log:
        return [line for line in log if line.startswith("$ ")]


BUILD = textwrap.dedent("""
    import json, sys
    from anyray.adapters.node import python_envs
    print(json.dumps(python_envs.ensure_env("pip", json.loads(sys.argv[1]), cache_dir=sys.argv[2])))
""")


@pytest.fixture(scope="module")
def built(cache):
    """The file's one pip environment, asked for by two processes at once (after leftovers of a killed
    build of the same set were planted): returns (interpreter, what each builder returned)."""
    key = python_envs.env_key("pip", python_envs.normalize("pip", REQUIREMENTS))
    os.makedirs(cache, mode=0o700, exist_ok=True)
    os.mkdir(os.path.join(cache, f"{key}-deadbeef"))  # a killed builder's half-built environment
    os.symlink(f"{key}-deadbeef", os.path.join(cache, f"{key}.link-deadbeef"))
    builders = [subprocess.Popen([sys.executable, "-c", BUILD, json.dumps(REQUIREMENTS), cache],
                                 stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [b.communicate(timeout=600)[0] for b in builders]
    assert [b.returncode for b in builders] == [0, 0], outputs
    paths = [json.loads(out) for out in outputs]
    return paths[0], paths


# ---- the accepted forms (no build)


def test_normalize_accepts_rays_forms(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("termcolor==2.4.0\nsix\ntermcolor==2.4.0\n")
    from_file = python_envs.normalize("pip", str(requirements))
    assert from_file == {"packages": ["termcolor==2.4.0", "six"], "pip_check": False}
    assert python_envs.normalize("pip", ["termcolor==2.4.0", "six"]) == from_file
    assert python_envs.normalize("pip", {"packages": str(requirements)}) == from_file
    full = {"packages": ["six"], "pip_check": True, "pip_version": "==23.2.1", "pip_install_options": ["-q"]}
    assert python_envs.normalize("pip", full) == full
    assert python_envs.normalize("uv", ["six"]) == {"packages": ["six"], "uv_check": False}
    assert python_envs.normalize("uv", {"packages": ["six"]}) == {
        "packages": ["six"], "uv_check": False, "uv_pip_install_options": ["--no-cache"]}
    for tool in ("pip", "uv"):
        assert python_envs.normalize(tool, []) is None
        once = python_envs.normalize(tool, {"packages": ["six", "six"]})
        assert python_envs.normalize(tool, once) == once
    assert python_envs.ensure_env("pip", []) is None  # nothing to install: the node's own interpreter


def test_included_requirement_files_are_read_in_place(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.txt").write_text("six\n-r ../requirements.txt\n")  # a cycle: read once
    (tmp_path / "requirements.txt").write_text("termcolor==2.4.0\n-r sub/base.txt\n")
    expected = {"packages": ["termcolor==2.4.0", "six"], "pip_check": False}
    assert python_envs.normalize("pip", str(tmp_path / "requirements.txt")) == expected
    monkeypatch.chdir(tmp_path)  # in a list, relative to the working directory
    assert python_envs.normalize("pip", ["--requirement=requirements.txt"]) == expected
    assert python_envs.normalize("uv", {"packages": ["-r", "x"]})["packages"] == ["-r", "x"]  # not a file line
    with pytest.raises(ValueError, match="is not a valid file"):
        python_envs.normalize("pip", ["-r missing.txt"])
    key = python_envs.env_key("pip", python_envs.normalize("pip", "requirements.txt"))
    (tmp_path / "sub" / "base.txt").write_text("six==1.16.0\n")
    assert python_envs.env_key("pip", python_envs.normalize("pip", "requirements.txt")) != key


def test_one_requirement_set_one_key(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# pinned\nsix\n\n  termcolor==2.4.0\n")
    key = python_envs.env_key("pip", python_envs.normalize("pip", str(requirements)))
    assert key == python_envs.env_key("pip", python_envs.normalize("pip", ["six", "termcolor==2.4.0"]))
    assert key != python_envs.env_key("pip", python_envs.normalize("pip", ["six", "termcolor==2.3.0"]))
    assert key != python_envs.env_key("uv", python_envs.normalize("uv", ["six", "termcolor==2.4.0"]))
    checked = python_envs.normalize("pip", {"packages": ["six", "termcolor==2.4.0"], "pip_check": True})
    assert key != python_envs.env_key("pip", checked)
    uv_key = python_envs.env_key("uv", python_envs.normalize("uv", ["six"]))
    assert uv_key == python_envs.env_key("uv", python_envs.normalize("uv", {"packages": ["six"]}))  # the defaults


@pytest.mark.parametrize("tool, value, error, words", [
    ("pip", 3, TypeError, "must be of type"),
    ("pip", ["six", 3], TypeError, "must be of type"),
    ("pip", "/no/such/requirements.txt", ValueError, "is not a valid file"),
    ("pip", {"packages": ["six"], "pip_chek": True}, ValueError, "can only have these fields"),
    ("pip", {"pip_check": True}, ValueError, "must include field 'packages'"),
    ("pip", {"packages": ["six"], "pip_check": "yes"}, TypeError, "pip_check"),
    ("pip", {"packages": ["six"], "pip_version": 23}, TypeError, "pip_version"),
    ("pip", {"packages": ["six"], "pip_install_options": "-q"}, TypeError, "pip_install_options"),
    ("uv", {"packages": "requirements.txt"}, ValueError, "must be of type list"),
    ("uv", {"packages": ["six"], "pip_check": True}, ValueError, "can only have these fields"),
    ("conda", ["six"], ValueError, "'pip' or 'uv'"),
])
def test_malformed_values_are_refused_with_what_was_wrong(tool, value, error, words):
    with pytest.raises(error, match=words):
        python_envs.normalize(tool, value)


def test_bad_timeout_is_refused(cache):
    for timeout in (0, -5, "600", True):
        with pytest.raises(ValueError, match="setup_timeout_seconds"):
            python_envs.ensure_env("pip", [MISSING], setup_timeout_seconds=timeout, cache_dir=cache)


def test_runtime_env_setup_error_is_rays_and_pickles():
    error = RuntimeEnvSetupError("pip said no")
    assert type(error).__module__ == "anyray.exceptions" and anyray.exceptions.RuntimeEnvSetupError is type(error)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is RuntimeEnvSetupError and again.error_message == "pip said no"
    assert str(again) == "Failed to set up runtime environment.\npip said no"


# ---- installs that fail (first: the good environment is built after them)


def test_a_package_that_does_not_exist_raises_with_pips_message_and_leaves_nothing(cache):
    value = {"packages": [MISSING], "pip_install_options": [
        "--disable-pip-version-check", "--retries", "0", "--timeout", "5",
        "--extra-index-url", f"http://user:{SECRET}@127.0.0.1:9/simple"]}  # refused at once; a secret in it
    with pytest.raises(RuntimeEnvSetupError) as caught:
        python_envs.ensure_env("pip", value, cache_dir=cache)
    message = str(caught.value)
    assert MISSING in message and "No matching distribution found" in message  # pip's own words
    assert SECRET not in message
    assert pickle.loads(pickle.dumps(caught.value)).error_message == caught.value.error_message
    key = python_envs.env_key("pip", python_envs.normalize("pip", value))
    assert [e for e in os.listdir(cache) if e.startswith(key) and not e.endswith(".lock")] == []
    assert python_envs.find_env("pip", value, cache_dir=cache) is None
    with pytest.raises(RuntimeEnvSetupError, match="No matching distribution found"):  # fails again, afresh
        python_envs.ensure_env("pip", value, cache_dir=cache)


def test_an_install_past_the_setup_timeout_is_stopped(cache):
    with socket.socket() as silent:  # an index that accepts connections and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/simple"
        value = {"packages": [MISSING + "-slow"],
                 "pip_install_options": ["--index-url", url, "--timeout", "300", "--retries", "0"]}
        with pytest.raises(RuntimeEnvSetupError, match="setup_timeout_seconds"):
            python_envs.ensure_env("pip", value, setup_timeout_seconds=3, cache_dir=cache)
    key = python_envs.env_key("pip", python_envs.normalize("pip", value))
    assert [e for e in os.listdir(cache) if e.startswith(key) and not e.endswith(".lock")] == []
    stray = [p for p in psutil.process_iter(["cmdline"]) if key in " ".join(p.info["cmdline"] or [])]
    assert stray == []  # the installer was killed with the build


# ---- the environment


def test_two_builders_of_one_set_build_it_once(built, cache):
    python, paths = built
    assert paths == [python, python]
    key = python_envs.env_key("pip", python_envs.normalize("pip", REQUIREMENTS))
    env_dirs = [e for e in os.listdir(cache) if e.startswith(key + "-")]
    assert env_dirs == [os.path.basename(os.path.dirname(os.path.dirname(python)))]  # leftovers removed
    assert not [e for e in os.listdir(cache) if ".link-" in e]
    installs = [run for run in installer_runs(os.path.dirname(os.path.dirname(python))) if "pip install" in run]
    assert len(installs) == 1
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


def test_the_second_request_reuses_the_environment(built, cache, tmp_path):
    python, _ = built
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(REQUIREMENTS) + "\n")
    env_dir = os.path.dirname(os.path.dirname(python))
    runs = installer_runs(env_dir)
    before = sorted(os.listdir(cache))
    for value in (REQUIREMENTS, str(requirements), {"packages": REQUIREMENTS}):
        assert python_envs.ensure_env("pip", value, cache_dir=cache) == python
    assert python_envs.find_env("pip", REQUIREMENTS, cache_dir=cache) == python
    assert installer_runs(env_dir) == runs and sorted(os.listdir(cache)) == before  # no pip ran, nothing new


def test_the_environment_layers_on_the_nodes_packages(built):
    python, _ = built
    probe = textwrap.dedent(f"""
        import importlib.metadata as md, sys, anyray, cloudpickle, numpy, {NEW_PACKAGE}, {PINNED_PACKAGE}
        print(sys.prefix, md.version("{NEW_PACKAGE}"), md.version("{PINNED_PACKAGE}"), anyray.__file__)
    """)
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    prefix, new, pinned, anyray_file = out.stdout.split()
    assert prefix == os.path.dirname(os.path.dirname(python))
    assert (new, pinned) == (NEW_VERSION, PINNED_VERSION)  # the requirement wins over the node's copy
    assert importlib.metadata.version(PINNED_PACKAGE) != PINNED_VERSION  # which pip left where it was
    assert anyray_file == anyray.__file__  # the node's anyray (an editable install works too)


def test_workers_start_from_the_environments_interpreter(built):
    python, _ = built
    new_package, pinned_package = NEW_PACKAGE, PINNED_PACKAGE

    def where():  # nested: sent by value, the worker does not import this module
        import importlib.metadata as md
        import sys

        import anyray  # noqa: F401

        try:
            __import__(new_package)
            version = md.version(new_package)
        except ImportError:
            version = None
        return sys.prefix, version, md.version(pinned_package)

    session = Session()
    pool = WorkerPool(session)
    try:
        ordinary = pool.start_worker()
        in_env = [pool.start_worker(python=python) for _ in range(2)]
        assert all(w.wait_ready(TIMEOUT) for w in [ordinary, *in_env])
        env_dir = os.path.dirname(os.path.dirname(python))
        for worker in in_env:
            assert worker.call(where) == (env_dir, NEW_VERSION, PINNED_VERSION)
            assert worker.python == python
        assert ordinary.python == sys.executable
        assert ordinary.call(where)[1] is None  # the node's own workers do not see the environment
        parents = {psutil.Process(w.pid).ppid() for w in in_env}
        assert len(parents) == 1 and parents != {psutil.Process(ordinary.pid).ppid()}  # its own fork server
        server = psutil.Process(parents.pop())
        assert server.cmdline()[0] == python and server.num_threads() == 1
        later = pool.start_worker(python=python)  # forked by the same server
        assert later.wait_ready(TIMEOUT) and psutil.Process(later.pid).ppid() == server.pid
    finally:
        pool.close()
        session.close()
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE


def test_killing_the_driver_takes_the_environments_fork_server_and_workers_with_it(built):
    python, _ = built
    code = textwrap.dedent(f"""
        import sys, time, psutil
        from anyray.adapters.node.session import Session
        from anyray.adapters.node.pool import WorkerPool
        session = Session()
        pool = WorkerPool(session)
        workers = [pool.start_worker(python={python!r}), pool.start_worker(python={python!r}), pool.start_worker()]
        assert all(w.wait_ready(60) for w in workers)
        servers = {{psutil.Process(w.pid).ppid() for w in workers}}
        print(*servers, *[w.pid for w in workers], session.path, flush=True)
        time.sleep(600)
    """)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        *pids, path = driver.stdout.readline().split()
        pids = [int(p) for p in pids]
        assert len(pids) == 5 and os.path.isdir(path)  # two servers, three workers
        driver.kill()
        driver.wait(TIMEOUT)
        assert wait_until(lambda: all(gone(p) for p in pids)), [p for p in pids if not gone(p)]
        assert wait_until(lambda: not os.path.exists(path))
    finally:
        driver.kill()
        driver.stdout.close()


def test_a_whole_program_runs_in_the_environment(built):
    python, _ = built
    program = textwrap.dedent(f"""
        import anyray, {NEW_PACKAGE}
        anyray.init(num_cpus=1)
        @anyray.remote
        def f():
            import sys, {NEW_PACKAGE}
            return sys.prefix
        print(anyray.get(f.remote()))
        anyray.shutdown()
    """)
    out = subprocess.run([python, "-c", program], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == os.path.dirname(os.path.dirname(python))


def test_a_worker_from_a_bad_interpreter_fails_instead_of_hanging(tmp_path):
    session = Session()
    exits = []
    died = threading.Event()
    pool = WorkerPool(session, on_exit=lambda handle: (exits.append(handle), died.set()))
    try:
        with pytest.raises(ValueError, match="No Python interpreter"):
            pool.start_worker(python=str(tmp_path / "missing" / "python"))
        for _ in range(2):  # the second time, a new server for it, which fails as clearly
            died.clear()
            try:
                worker = pool.start_worker(python="/bin/false")  # runs, but is no Python that can serve
            except AnyrayError as exc:  # it was seen to exit before the order went
                assert "fork server for /bin/false exited" in str(exc)
                continue
            assert not worker.wait_ready(TIMEOUT)
            assert died.wait(TIMEOUT) and exits[-1] is worker
            assert "fork server for /bin/false exited before it connected" in worker.exit.reason
        assert pool.start_worker().wait_ready(TIMEOUT)  # the node's own workers are unaffected
    finally:
        pool.close()
        session.close()


def test_uv_builds_an_environment(cache):
    python = python_envs.ensure_env("uv", [f"{NEW_PACKAGE}=={NEW_VERSION}"], cache_dir=cache)
    out = subprocess.run([python, "-c", f"import anyray, importlib.metadata as md; print(md.version('{NEW_PACKAGE}'))"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stdout.strip() == NEW_VERSION, out.stderr
    runs = installer_runs(os.path.dirname(os.path.dirname(python)))
    assert any(" pip install --python " in run and run.rstrip().endswith("--no-cache") for run in runs)  # uv's
    assert python_envs.ensure_env("uv", [f"{NEW_PACKAGE}=={NEW_VERSION}"], cache_dir=cache) == python


def test_cache_dir_is_private(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(RuntimeEnvSetupError):  # the install fails, but the directory was made private first
        python_envs.ensure_env("pip", {"packages": [MISSING], "pip_install_options": ["--no-index"]},
                               cache_dir=str(loose))
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    monkeypatch.setenv(python_envs.CACHE_ENV, str(tmp_path / "configured"))
    assert python_envs.default_cache_dir() == str(tmp_path / "configured")
