"""What workers write, ``logging`` records included, reaches the driver marked with the task (the function, or
the actor's class), the worker's pid and, from a cluster's node, its address: ``(f pid=N, ip=HOST) text``, as
Ray marks it. ``init(log_to_driver=False)`` shows none of it. Real drivers, real workers, real daemons.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from test_cluster import WAIT, driver, start_head

BODY = """
    import logging, os

    @anyray.remote
    def f():
        logging.getLogger("user").info("not shown: Python's default level is WARNING, as in Ray's workers")
        logging.getLogger("user").warning("warning from a task")
        print("printed", end="")
        print(" in two pieces")
        return os.getpid()

    @anyray.remote
    class Keeper:
        def go(self):
            logging.getLogger("user").error("error from an actor")
            return os.getpid()

    print("pids", anyray.get(f.remote()), anyray.get(Keeper.remote().go.remote()), flush=True)
"""


def multiprocess_driver(options: str) -> subprocess.CompletedProcess:
    code = f"import anyray\nanyray.init(backend='multiprocess', num_cpus=2{options})\n" + textwrap.dedent(BODY)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT)


def check_marked(run: subprocess.CompletedProcess, where: str) -> None:
    assert run.returncode == 0, run.stderr
    task, actor = run.stdout.split("pids ")[1].split()[:2]
    assert f"(f pid={task}{where}) warning from a task\n" in run.stderr
    assert f"(f pid={task}{where}) printed in two pieces\n" in run.stdout
    assert f"(Keeper pid={actor}{where}) error from an actor\n" in run.stderr
    assert "not shown" not in run.stdout + run.stderr


def check_nothing_shown(run: subprocess.CompletedProcess) -> None:
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("pids ")
    for text in ("warning from a task", "printed", "error from an actor"):
        assert text not in run.stdout + run.stderr


def test_multiprocess_workers_output_and_log_records_are_marked_with_task_and_pid():
    check_marked(multiprocess_driver(""), "")


def test_multiprocess_log_to_driver_false_shows_nothing_workers_write():
    check_nothing_shown(multiprocess_driver(", log_to_driver=False"))


def test_cluster_workers_output_and_log_records_are_marked_with_task_pid_and_node(cluster_env):
    start_head(cluster_env, "--num-cpus", "2")
    check_marked(driver(cluster_env, BODY), ", ip=127.0.0.1")
    code = "anyray.shutdown()\nanyray.init(backend='cluster', address='auto', log_to_driver=False)\n"
    check_nothing_shown(driver(cluster_env, code + textwrap.dedent(BODY)))


def test_logging_level_sets_what_the_driver_s_own_diagnostics_show():
    """Ray's ``logging_level`` is the level of the driver's own logger: anyray's warnings (here: a Pool's ignored
    ``context``) show by default, and not with ``logging_level="error"``; a level that is none is refused."""
    code = """
        import multiprocessing, sys, anyray
        from anyray.util.multiprocessing import Pool
        anyray.init(backend="local", num_cpus=1, **({"logging_level": sys.argv[1]} if len(sys.argv) > 1 else {}))
        Pool(1, context=multiprocessing.get_context("spawn")).terminate()  # anyray warns: context is ignored
        print("submitted", flush=True)
    """
    shown = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=WAIT)
    hidden = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "ERROR"], capture_output=True, text=True,
                            timeout=WAIT)
    assert "submitted" in shown.stdout and "submitted" in hidden.stdout
    assert "(anyray) Pool(context=...) is ignored" in shown.stderr
    assert "(anyray)" not in hidden.stderr
    bad = subprocess.run([sys.executable, "-c", textwrap.dedent(code), "loud"], capture_output=True, text=True,
                         timeout=WAIT)
    assert bad.returncode != 0 and "logging_level must be a logging level such as 'info'" in bad.stderr
