"""Run the conformance suite on the Ray backend, on one node and then on two; run a part again if Ray's
own core crashed.

The first run is the whole suite on the Ray that ``anyray.init`` starts (one
node). The second starts a Ray cluster of two nodes on this machine
(``ray.cluster_utils.Cluster``: a head with 2 CPUs and ``{"Custom": 2}``, a
second node with 2 CPUs, as the cluster backend's conformance runs split the
session's 4 CPUs) and runs the tests that need several nodes against it:
``test_multi_node.py``, ``test_placement_groups.py::TestAcrossNodes`` and the runtime_env test of a
working_dir on every node.
``--one-node`` skips the second run. Other arguments go to pytest in both
runs (``-k placement`` selects in each).

Ray 2.60's core worker can abort the driver process on an internal check when a
``ray.cancel`` races a task's completion ("Check failed: it !=
submissible_tasks_.end()", ray-project/ray#54846). The process then dies without
a Python traceback, in roughly one run of the cancel tests in ten here (twice in
a row in one CI run). That is Ray's crash, not a failed test: when, and only
when, the driver's Ray log shows that check failing, this says so and runs that
part again, up to ``ATTEMPTS`` runs in all. Any other failure is reported as it is.

    python plugins/anyray-ray/tools/conformance.py [--one-node] [pytest args...]
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

RAY_CRASH = "Check failed: it != submissible_tasks_.end()"
ATTEMPTS = 4  # runs of a part at most, while each one ends in that crash
MULTI_NODE_TESTS = ["conformance_tests/test_multi_node.py",
                    "conformance_tests/test_placement_groups.py::TestAcrossNodes",
                    "conformance_tests/test_runtime_env.py::test_the_working_dir_reaches_every_node"]


def ray_crashed(pid: int) -> bool:
    root = os.environ.get("RAY_TMPDIR") or os.path.join(tempfile.gettempdir(), "ray")
    for log in glob.glob(os.path.join(root, "session_*", "logs", f"python-core-driver-*_{pid}.log")):
        try:
            with open(log, errors="replace") as f:
                if RAY_CRASH in f.read():
                    return True
        except OSError:
            pass
    return False


def run_pytest(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", *args]
    for attempt in range(1, ATTEMPTS + 1):
        proc = subprocess.Popen(cmd)
        code = proc.wait()
        if code == 0 or attempt == ATTEMPTS or not ray_crashed(proc.pid):
            return code
        print(f"\n(anyray) Ray's core aborted the test process (pid {proc.pid}) on its internal check "
              f"{RAY_CRASH!r}, a known Ray race between cancel and task completion (ray-project/ray#54846); "
              f"running it again ({attempt + 1} of at most {ATTEMPTS}).\n", flush=True)
    return code


def two_node_run(args: list[str]) -> int:
    from ray.cluster_utils import Cluster

    print("\n(anyray) the tests that need several nodes, on a Ray cluster of two nodes\n", flush=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"Custom": 2},
                                                             "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        code = run_pytest([*MULTI_NODE_TESTS, "--backend", "ray", "--backend-option", f"address={cluster.address}",
                           "--backend-option", "num_cpus=null", "--backend-option", "resources=null", *args])
    finally:
        cluster.shutdown()
    return 0 if code == 5 else code  # 5: -k left none of them selected


def main(args: list[str]) -> int:
    one_node = "--one-node" in args
    args = [a for a in args if a != "--one-node"]
    code = run_pytest(["conformance_tests", "--backend", "ray", *args])
    if one_node:
        return code
    return two_node_run(args) or code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
