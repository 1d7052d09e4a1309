"""Run the conformance suite on the Ray backend; run it once more if Ray's own core crashed.

Ray 2.60's core worker can abort the driver process on an internal check when a
``ray.cancel`` races a task's completion ("Check failed: it !=
submissible_tasks_.end()", ray-project/ray#54846). The process then dies without
a Python traceback, in roughly one run of the cancel tests in ten here. That is
Ray's crash, not a failed test: when, and only when, the driver's Ray log shows
that check failing, this says so and runs the suite once more. Any other
failure is reported as it is.

    python plugins/anyray-ray/tools/conformance.py [pytest args...]
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile

RAY_CRASH = "Check failed: it != submissible_tasks_.end()"


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


def main(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", "conformance_tests", "--backend", "ray", *args]
    for attempt in (1, 2):
        proc = subprocess.Popen(cmd)
        code = proc.wait()
        if code == 0 or attempt == 2 or not ray_crashed(proc.pid):
            return code
        print(f"\n(anyray) Ray's core aborted the test process (pid {proc.pid}) on its internal check "
              f"{RAY_CRASH!r}, a known Ray race between cancel and task completion (ray-project/ray#54846); "
              f"running the suite once more.\n", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
