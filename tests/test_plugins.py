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
