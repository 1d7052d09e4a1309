"""Ctrl-C in a driver waiting on the local backend interrupts the driver, whoever runs the task."""

import signal
import subprocess
import sys
import textwrap
import time

SCRIPT = textwrap.dedent("""
    import sys, time
    import anyray

    anyray.init(backend="local", num_cpus=1)

    @anyray.remote
    def spin():
        print("task started", flush=True)
        while True:
            time.sleep(0.01)

    try:
        anyray.get(spin.remote())
    except KeyboardInterrupt:
        print("driver interrupted", flush=True)
        anyray.shutdown()
        sys.exit(3)
""")


def test_ctrl_c_while_waiting_for_a_running_task_reaches_the_driver(tmp_path):
    script = tmp_path / "spin.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "task started"
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "driver interrupted" in out, err
    assert proc.returncode == 3
