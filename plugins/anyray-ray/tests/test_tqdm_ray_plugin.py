"""``anyray.experimental.tqdm_ray`` on the ray backend: in a Ray worker a bar's state goes out as Ray's own
``tqdm_ray`` sends it, so Ray's driver draws the bars (with ``tqdm`` when installed; without it Ray says it
disables them). No state line reaches the driver's output either way."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")

PROGRAM = """
    import time
    import anyray
    from anyray.experimental.tqdm_ray import tqdm

    anyray.init(backend="ray", num_cpus=2)

    @anyray.remote
    def work(name):
        bar = tqdm(desc=name, total=100, flush_interval_s=0.2)
        for _ in range(10):
            time.sleep(0.05)
            bar.update(10)
        bar.close()
        return name

    print("results", anyray.get([work.remote("alpha"), work.remote("beta")]), flush=True)
    time.sleep(3)  # Ray's log monitor forwards the last lines after get returns
"""


def test_ray_s_driver_takes_the_bars_of_anyray_s_tqdm_ray():
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(PROGRAM)], capture_output=True, text=True,
                         timeout=180)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "results ['alpha', 'beta']" in out
    assert "__magic_token__" not in out and "__ray_tqdm_magic_token__" not in out, out
    try:
        import tqdm  # noqa: F401 - Ray draws with it
    except ImportError:
        assert "tqdm is not installed. Progress bars will be disabled." in out, out
    else:
        assert re.search(r"alpha: 100%.*100/100", out) and re.search(r"beta: 100%.*100/100", out), out
