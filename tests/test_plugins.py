"""Backends are found through the ``anyray.backends`` entry-point group, built-in or not."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import anyray
from anyray.exceptions import BackendNotFoundError

THROWAWAY = textwrap.dedent('''
    from anyray.adapters.local import LocalBackend
    from anyray.hookspecs import hookimpl


    class ThrowawayBackend(LocalBackend):
        name = "throwaway"
        description = "a third party's backend, installed through entry_points.txt"
        capabilities = frozenset({"concurrent"})


    @hookimpl
    def anyray_backends():
        return [ThrowawayBackend]
''')


def install_throwaway(root):
    """A distribution made by hand: a module plus a dist-info whose entry_points.txt names it."""
    (root / "throwaway_backend.py").write_text(THROWAWAY)
    dist = root / "throwaway_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[anyray.backends]\nthrowaway = throwaway_backend\n")


def run_python(code: str, path, *args):
    env = dict(os.environ, PYTHONPATH=str(path))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120)


def test_a_third_party_backend_is_found_by_init(tmp_path):
    install_throwaway(tmp_path)
    code = textwrap.dedent('''
        import json, anyray
        ctx = anyray.init(backend="throwaway", num_cpus=1)
        f = anyray.remote(lambda x: x + 1)
        print(json.dumps({"backend": ctx.backend, "value": anyray.get(f.remote(1))}))
    ''')
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"backend": "throwaway", "value": 2}


def test_the_backends_command_lists_a_third_party_backend_with_capabilities(tmp_path):
    install_throwaway(tmp_path)
    proc = run_python("import sys; from anyray.cli import main; sys.exit(main(['backends']))", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "throwaway" in proc.stdout and "throwaway_backend" in proc.stdout
    assert "capabilities: concurrent" in proc.stdout
    assert "local" in proc.stdout


def test_an_unknown_backend_names_the_installed_ones():
    with pytest.raises(BackendNotFoundError, match=r"No anyray backend named 'nope'.*Installed backends: .*local"):
        anyray.init(backend="nope")
    assert not anyray.is_initialized()


def test_a_broken_plugin_is_listed_with_its_error_and_hides_nothing(tmp_path):
    (tmp_path / "broken_backend.py").write_text("raise ImportError('needs the engine installed')\n")
    dist = tmp_path / "broken_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[anyray.backends]\nbroken = broken_backend\n")
    proc = run_python("import sys; from anyray.cli import main; sys.exit(main(['backends']))", tmp_path)
    assert "broken" in proc.stdout and "needs the engine installed" in proc.stdout
    assert "local" in proc.stdout


GAPPED = textwrap.dedent('''
    from anyray.adapters.local import LocalBackend
    from anyray.hookspecs import hookimpl
    from anyray.ports.backend import notyet


    class GappedBackend(LocalBackend):
        name = "gapped"
        capabilities = LocalBackend.capabilities
        known_gaps = GAPS


    @hookimpl
    def anyray_backends():
        return [GappedBackend]
''')


def run_suite_with_gaps(root, gaps: str, *pytest_args):
    """The conformance suite, in a subprocess, on a local-like backend that declares ``gaps`` (source text)."""
    (root / "gapped_backend.py").write_text(GAPPED.replace("GAPS", gaps))
    dist = root / "gapped_backend-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gapped-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[anyray.backends]\ngapped = gapped_backend\n")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "anyray.conformance", "--backend", "gapped",
                           "-p", "no:cacheprovider", "-rxX", *pytest_args],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)


def test_a_gap_naming_no_test_of_the_suite_stops_the_run_even_when_k_narrows_it(tmp_path):
    proc = run_suite_with_gaps(tmp_path, '{"test_a_task_returning_none": "fine", "test_renamed_long_ago": "stale"}',
                               "-k", "test_a_task_returning_none")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "backend 'gapped' declares known gaps that name no test of the conformance suite: " \
           "test_renamed_long_ago" in proc.stderr
    assert "rename the gap or drop it" in proc.stderr


def test_a_gap_that_closed_fails_the_run_with_its_kind_and_reason(tmp_path):
    proc = run_suite_with_gaps(tmp_path, '{"test_tasks::test_a_task_returning_none": notyet("engine says no")}',
                               "-k", "test_a_task_returning_none")
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout + proc.stderr
    assert "XPASS(strict)" in proc.stdout
    assert "known gap of 'gapped' (the engine cannot yet: engine says no)" in proc.stdout


def test_a_gap_needs_a_reason_and_a_known_kind(tmp_path):
    proc = run_suite_with_gaps(tmp_path, '{"test_a_task_returning_none": ""}', "-k", "test_a_task_returning_none")
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "A known gap needs its reason" in proc.stderr


def test_a_gaps_timeout_ends_a_test_that_would_wait_longer(tmp_path):
    proc = run_suite_with_gaps(
        tmp_path, '{"test_a_task_waits_for_its_ref_arguments": notyet("waits here", timeout=0.1)}',
        "-k", "test_a_task_waits_for_its_ref_arguments", "--durations=1")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr
    assert "1 xfailed" in proc.stdout
    assert "XFAIL" in proc.stdout and "the engine cannot yet: waits here" in proc.stdout
