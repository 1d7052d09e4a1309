"""``anyray.experimental.tqdm_ray`` (Ray's ``ray.experimental.tqdm_ray``): a ``tqdm`` in each of two tasks shows on
the driver as one bar per task, its description and its final count ``100/100`` once, with no raw state line in
the output, on every backend. Real drivers in subprocesses, real workers and, for a cluster, a real node; the
terminal case through a pseudo-terminal.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap

import pytest
from test_cluster import WAIT, driver, start_head

BODY = """
    import time
    from anyray.experimental.tqdm_ray import tqdm

    @anyray.remote
    def work(name):
        bar = tqdm(desc=name, total=100, flush_interval_s=0.2)
        for _ in range(10):
            time.sleep(0.05)
            bar.update(10)
        print("done", name)
        bar.close()
        return name

    print("results", anyray.get([work.remote("alpha"), work.remote("beta")]), flush=True)
"""


def run_driver(backend: str, body: str = BODY, env: dict | None = None, tty: bool = False) -> str:
    """What a driver on ``backend`` printed (stdout and stderr), through a pseudo-terminal if ``tty``."""
    start = "address='auto'" if backend == "cluster" else "num_cpus=2"
    code = f"import anyray\nanyray.init(backend={backend!r}, {start})\n" + textwrap.dedent(body)
    if not tty:
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, env=env)
        assert run.returncode == 0, run.stderr
        return run.stdout + run.stderr
    pid, fd = pty.fork()
    if pid == 0:  # the driver, its stdout and stderr the terminal
        os.execve(sys.executable, [sys.executable, "-c", code], env or dict(os.environ))
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the driver ended: the terminal is closed
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text


def screen(raw: str) -> str:
    """What a terminal shows after ``raw``: its lines, with the cursor moves and erasures the bars use done."""
    lines, row, col = [""], 0, 0
    for token in re.split(r"(\x1b\[\d*[AJ]|\r|\n)", raw):
        if token == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            col = 0
        elif token.startswith("\x1b") and token.endswith("A"):
            row = max(0, row - int(token[2:-1] or 1))
        elif token.startswith("\x1b"):  # clear to the end of the screen
            lines[row] = lines[row][:col]
            del lines[row + 1:]
        elif token:
            lines[row] = lines[row][:col] + token + lines[row][col + len(token):]
            col += len(token)
    return "\n".join(lines)


def check_bars(out: str, mark: str) -> None:
    """One bar per task: its last line (``100/100``) once, marked as the task's lines are; no state lines."""
    assert "results ['alpha', 'beta']" in out
    assert "__magic_token__" not in out and "__ray_tqdm_magic_token__" not in out
    for name in ("alpha", "beta"):
        final = re.findall(rf"^\(work{mark}\) {name}: 100%\|.*\| 100/100 \[", out, re.MULTILINE)
        assert len(final) == 1, out
        printed = rf"\(work{mark}\) done {name}" if mark else f"done {name}"  # the local backend marks no lines
        assert re.search(rf"^{printed}$", out, re.MULTILINE), out
    if mark:
        pids = set(re.findall(r"^\(work pid=(\d+).*100/100", out, re.MULTILINE))
        assert len(pids) == 2, out  # each task's bar is its own, marked with its worker


@pytest.mark.parametrize("backend,mark", [("local", ""), ("multiprocess", r" pid=\d+")])
def test_each_task_s_bar_shows_once_finished_without_state_lines(backend, mark):
    check_bars(run_driver(backend), mark)


def test_cluster_bars_come_from_the_node_with_the_task_s_output(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    run = driver(cluster_env, BODY)
    assert run.returncode == 0, run.stderr
    check_bars(run.stdout + run.stderr, r" pid=\d+, ip=127\.0\.0\.1")


def check_terminal(raw: str, mark: str) -> None:
    check_bars(screen(raw), mark)  # what the terminal shows at the end
    assert "\x1b[J" in raw  # the bars were taken off and drawn again
    # what the tasks printed is a whole line, a bar never drawn inside it
    assert re.search(rf"\x1b\[J\(work{mark}\) done alpha\r\n", raw), raw


def test_on_a_terminal_bars_are_redrawn_in_place_and_lines_print_whole_above_them():
    check_terminal(run_driver("multiprocess", tty=True), r" pid=\d+")


def test_on_a_terminal_a_cluster_s_bars_are_redrawn_in_place_too(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    check_terminal(run_driver("cluster", env=cluster_env, tty=True), r" pid=\d+, ip=127\.0\.0\.1")


def test_safe_print_and_print_go_above_a_bar_the_driver_draws():
    body = """
        from anyray.experimental.tqdm_ray import safe_print, tqdm
        bar = tqdm(desc="main", total=3, flush_interval_s=0)
        bar.update()
        print("between")
        safe_print("safely")
        bar.update(2)
        bar.close()
        print("results ['alpha', 'beta']")
    """
    raw = run_driver("local", body, tty=True)
    assert "\x1b[1A\x1b[Jbetween\nmain:  33%" in raw.replace("\r", "")  # the bar off, the line, the bar again
    assert "\x1b[1A\x1b[Jsafely\nmain:  33%" in raw.replace("\r", "")
    shown = screen(raw).splitlines()
    assert shown[:3] == ["between", "safely", shown[2]] and re.match(r"main: 100%.*\| 3/3 \[", shown[2]), shown
    assert shown[3:] == ["results ['alpha', 'beta']"], shown


def test_off_a_terminal_a_bar_prints_a_line_at_most_every_interval():
    body = """
        import time
        from anyray.experimental.tqdm_ray import tqdm

        @anyray.remote
        def slow():
            for _ in tqdm(range(20), desc="slow", flush_interval_s=0.05):
                time.sleep(0.1)
            return "ok"

        print("results", anyray.get(slow.remote()), flush=True)
    """
    env = dict(os.environ, ANYRAY_TQDM_LINE_INTERVAL_S="60")
    out = run_driver("multiprocess", body, env=env)
    lines = [line for line in out.splitlines() if "slow: " in line]
    assert len(lines) == 2, out  # when it opened, and its last state when it closed
    assert "20/20" in lines[-1] and "20/20" not in lines[0]
    assert "__magic_token__" not in out


def test_a_ray_program_s_imports_give_anyray_s_tqdm(tmp_path):
    """``from ray.experimental.tqdm_ray import tqdm`` under ``anyray run``, and ``ray.experimental.tqdm_ray``
    after a bare ``import anyray as ray``."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent("""
        import ray
        from ray.experimental.tqdm_ray import tqdm

        @ray.remote
        def work():
            return sum(tqdm(range(5), desc="ray-named"))

        ray.init(num_cpus=1)
        print("results", ray.get(work.remote()), ray.experimental.tqdm_ray.tqdm is tqdm, flush=True)
    """))
    run = subprocess.run([sys.executable, "-m", "anyray.cli", "run", "--backend", "multiprocess", str(script)],
                         capture_output=True, text=True, timeout=WAIT)
    assert run.returncode == 0, run.stderr
    assert "results 10 True" in run.stdout
    assert re.search(r"^\(work pid=\d+\) ray-named: 100%\|.*\| 5/5 \[", run.stdout, re.MULTILINE), run.stdout
    import anyray as ray

    assert ray.experimental.tqdm_ray.tqdm.__module__ == "anyray.experimental.tqdm_ray"


def test_more_bars_than_the_terminal_holds_are_counted_not_drawn():
    body = """
        from anyray.experimental.tqdm_ray import tqdm
        bars = [tqdm(desc=f"bar{i}", total=10, flush_interval_s=0) for i in range(8)]
        for bar in bars:
            bar.update(5)
        for bar in bars:
            bar.close()
        print("results ['alpha', 'beta']")
    """
    raw = run_driver("local", body, env=dict(os.environ, LINES="6", COLUMNS="80"), tty=True)
    assert "... and 5 more bars" in raw  # 3 bars and that line: the 4 lines a 6-line terminal has room for
    shown = screen(raw).splitlines()
    assert [line.split(":")[0] for line in shown[:8]] == [f"bar{i}" for i in range(8)], shown
    assert all("| 5/10 [" in line for line in shown[:8]) and shown[8:] == ["results ['alpha', 'beta']"], shown


def test_on_a_terminal_a_worker_without_bars_prints_above_another_s_bar():
    """What any worker prints while bars are drawn goes above them whole: the driver takes the bars off first."""
    body = """
        import time
        from anyray.experimental.tqdm_ray import tqdm

        @anyray.remote
        def talk():
            print("hello from a worker without bars")

        @anyray.remote
        def work():
            bar = tqdm(desc="waiting", total=2)
            bar.update()
            bar.refresh()
            time.sleep(1.5)  # the bar is drawn by now
            anyray.get(talk.remote())
            bar.update()
            bar.close()

        anyray.get(work.remote())
        print("results ['alpha', 'beta']")
    """
    raw = run_driver("multiprocess", body, tty=True)
    assert re.search(r"\x1b\[J\(talk pid=\d+\) hello from a worker without bars\r\n", raw), raw
    shown = screen(raw).splitlines()
    assert re.match(r"\(talk pid=\d+\) hello from a worker without bars$", shown[0]), shown
    assert re.match(r"\(work pid=\d+\) waiting: 100%.*\| 2/2 \[", shown[1]), shown


def test_a_made_up_state_line_prints_as_it_is_and_the_bars_go_on():
    body = """
        from anyray.experimental.tqdm_ray import tqdm

        @anyray.remote
        def work():
            print('{"__magic_token__": "__ray_tqdm_magic_token__", "x": "not a number"}')
            for _ in tqdm(range(3), desc="after"):
                pass

        anyray.get(work.remote())
        print("results", flush=True)
    """
    out = run_driver("multiprocess", body)
    assert re.search(r'^\(work pid=\d+\) \{"__magic_token__": "__ray_tqdm_magic_token__", "x": "not a number"\}$',
                     out, re.MULTILINE), out
    assert re.search(r"^\(work pid=\d+\) after: 100%.*\| 3/3 \[", out, re.MULTILINE), out
