"""``anyray run`` runs an unmodified Ray script: ``import ray`` resolves to anyray."""

import os
import subprocess
import sys
import textwrap

RAY_SCRIPT = textwrap.dedent('''
    import sys

    import ray
    import ray.exceptions
    from ray.exceptions import RayTaskError

    import anyray
    import anyray.exceptions

    assert ray is anyray, "import ray must give the anyray module"
    assert ray.exceptions is anyray.exceptions and RayTaskError is anyray.exceptions.TaskError
    assert anyray.exceptions.__spec__.name == "anyray.exceptions"

    ray.init(num_cpus=2)

    @ray.remote
    def double(x):
        return 2 * x

    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def incr(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    ray.get([c.incr.remote() for _ in range(3)])
    print("double", ray.get(double.remote(21)), "count", ray.get(c.incr.remote()), "args", sys.argv[1:])
    try:
        ray.get(ray.remote(lambda: 1 / 0).remote())
    except ZeroDivisionError as exc:
        print("caught", isinstance(exc, RayTaskError))
    print("backend", ray.get_runtime_context().get()["namespace"] is not None)
    ray.shutdown()
''')


def anyray_cmd(*args):
    return [sys.executable, "-m", "anyray.cli", *args]


def test_run_executes_an_unmodified_ray_script(tmp_path):
    script = tmp_path / "ray_program.py"
    script.write_text(RAY_SCRIPT)
    proc = subprocess.run(anyray_cmd("run", "--backend", "local", str(script), "one", "--two"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "double 42 count 4 args ['one', '--two']" in proc.stdout
    assert "caught True" in proc.stdout


def test_run_reports_a_missing_script(tmp_path):
    proc = subprocess.run(anyray_cmd("run", str(tmp_path / "missing.py")), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no such script" in proc.stderr


def test_a_ray_module_anyray_lacks_fails_to_import_as_usual(tmp_path):
    script = tmp_path / "uses_util.py"
    script.write_text("import ray.util_that_does_not_exist\n")
    proc = subprocess.run(anyray_cmd("run", str(script)), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "No module named 'ray.util_that_does_not_exist'" in proc.stderr



def test_an_unknown_flag_of_a_command_that_explains_none_gets_argparse_s_error():
    proc = subprocess.run(anyray_cmd("backends", "--no-such-flag"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in proc.stderr


def test_a_ray_script_that_connects_by_address_selects_the_cluster_backend(tmp_path):
    script = tmp_path / "connects.py"
    script.write_text("import ray\nray.init(address='auto')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("ANYRAY_BACKEND", "ANYRAY_ADDRESS", "RAY_ADDRESS")}
    env["ANYRAY_CLUSTER_DIR"] = str(tmp_path / "no-cluster-here")
    proc = subprocess.run(anyray_cmd("run", str(script)), capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    assert "address='auto' found no anyray cluster on this machine" in proc.stderr  # the cluster backend's word
    assert "multiprocess" not in proc.stderr
