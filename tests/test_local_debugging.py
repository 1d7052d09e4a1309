"""The local backend's promise: breakpoint() and print inside a task work in the driver's terminal."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import anyray

    anyray.init(backend="local")

    @anyray.remote
    def task(x):
        y = x * 7
        breakpoint()
        print("task printed", y)
        return y

    print("result", anyray.get(task.remote(6)))
    anyray.shutdown()
""")


def test_breakpoint_in_a_task_stops_and_reads_the_debugger_commands(tmp_path):
    script = tmp_path / "debug_me.py"
    script.write_text(SCRIPT)
    env = {"PYTHONBREAKPOINT": "pdb.set_trace", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script)], input="p x\np y\nc\n", capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "(Pdb)" in out
    lines = out.replace("(Pdb) ", "\n").splitlines()
    assert "6" in lines and "42" in lines, out
    assert "task printed 42" in out
    assert "result 42" in out
