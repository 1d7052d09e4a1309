"""Lineage reconstruction on a cluster of two real node daemons: a task's large result stays on the node
that ran it; when that node is killed (SIGKILL) the task runs again on the survivor, within its
``max_retries``, and what cannot be rebuilt raises Ray's errors.

The driver runs in a subprocess connected to the head; it prints ``ready`` once the work is done on the
other node, the test kills that node and waits for its lease to lapse, then the driver reads the results.
Each task leaves a mark file per run (the node it ran on), so the test sees what ran again and where.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from test_cluster import WAIT, cluster_env, kill_node, status_nodes, two_nodes, wait_until  # noqa: F401

PRELUDE = """
    import os, sys, time
    import numpy as np
    import anyray
    from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    anyray.init(backend="cluster", address="auto")
    MARKS = {marks!r}
    THERE = NodeAffinitySchedulingStrategy({other!r}, soft=True)

    def mark(tag):
        node = anyray.get_runtime_context().get_node_id()
        with open(os.path.join(MARKS, f"{{tag}}-{{time.monotonic_ns()}}"), "w") as f:
            f.write(node)

    def done(*tags):  # every tag ran once: its large result sits on the other node now
        while not all(any(n.startswith(t + "-") for n in os.listdir(MARKS)) for t in tags):
            time.sleep(0.05)
        time.sleep(1.0)  # the result is sealed there and its owner told it stays there

    @anyray.remote(num_cpus=1)
    def make(tag, value):
        mark(tag)
        return np.full(200_000, value, dtype=np.int64)  # 1.6 MB: in the other node's shared memory
"""


def run_driver(env, head, other, marks, body: str) -> tuple[str, str]:
    """Run ``body`` in a driver; kill the other node when it prints ``ready``; its output and stderr."""
    code = textwrap.dedent(PRELUDE.format(marks=str(marks), other=other["node_id"])) + textwrap.dedent(body)
    run = subprocess.Popen([sys.executable, "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        line = run.stdout.readline()
        assert line.strip() == "ready", line + run.stderr.read()
        kill_node(other)
        wait_until(lambda: status_nodes(env) == [head["node_id"]], "the killed node's lease to lapse")
        run.stdin.write("\n")
        run.stdin.flush()
        out, err = run.communicate(timeout=WAIT * 2)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    return out, err


def runs(marks, tag: str) -> list[str]:
    """The nodes ``tag`` ran on, in order."""
    names = sorted((n for n in os.listdir(marks) if n.startswith(tag + "-")), key=lambda n: int(n.split("-")[1]))
    return [(marks / n).read_text() for n in names]


def test_a_result_lost_with_its_node_is_rebuilt_on_the_survivor_and_what_cannot_be_raises(cluster_env, tmp_path):
    head, other = two_nodes(cluster_env, ("--num-cpus", "2"), ("--num-cpus", "2"))
    marks = tmp_path / "marks"
    marks.mkdir()
    out, _ = run_driver(cluster_env, head, other, marks, """
        from anyray.exceptions import ObjectLostError, ObjectReconstructionFailedError, OwnerDiedError

        @anyray.remote(num_cpus=1)
        def double(box):  # its argument inside a list: read on the node it runs on
            mark("double")
            return anyray.get(box[0]) * 2

        @anyray.remote(num_cpus=1, scheduling_strategy=THERE)
        def put_there():
            return [anyray.put(np.ones(200_000))]  # owned by a worker of the other node

        kept = make.options(scheduling_strategy=THERE).remote("kept", 7)
        once = make.options(scheduling_strategy=THERE, max_retries=0).remote("once", 1)
        a = make.options(scheduling_strategy=THERE).remote("a", 3)
        b = double.options(scheduling_strategy=THERE).remote([a])
        del a  # b's lineage keeps a's
        inner = anyray.get(put_there.remote())[0]
        done("kept", "once", "a", "double")
        print("ready", flush=True)
        sys.stdin.readline()  # the test kills the other node now

        value = anyray.get(kept, timeout=120)
        assert value.shape == (200_000,) and (value == 7).all()
        assert (anyray.get(b, timeout=120) == 6).all()
        try:
            anyray.get(once, timeout=60)
            raise AssertionError("a lost result of a task with max_retries=0 was read")
        except ObjectReconstructionFailedError as exc:
            assert exc.reason == "OBJECT_UNRECONSTRUCTABLE_RETRIES_DISABLED", exc.reason
            assert "max_retries=0" in str(exc), exc
        try:
            anyray.get(inner, timeout=60)
            raise AssertionError("an object whose owner died was read")
        except OwnerDiedError as exc:
            assert isinstance(exc, ObjectLostError) and "lost" in str(exc), exc
        print("done", flush=True)
    """)
    assert out.strip() == "done"
    there, here = other["node_id"], head["node_id"]
    assert runs(marks, "kept") == [there, here]  # ran again, on the survivor
    assert runs(marks, "once") == [there]  # max_retries=0: not again
    assert runs(marks, "a") == [there, here]  # lost with b: rebuilt for b's second run
    assert runs(marks, "double") == [there, here]


def test_a_rebuild_counts_against_max_retries(cluster_env, tmp_path):
    """A task that crashed once (max_retries=1) has no run left to rebuild its result with."""
    head, other = two_nodes(cluster_env, ("--num-cpus", "2"), ("--num-cpus", "2"))
    marks = tmp_path / "marks"
    marks.mkdir()
    out, _ = run_driver(cluster_env, head, other, marks, """
        from anyray.exceptions import ObjectReconstructionFailedError

        @anyray.remote(num_cpus=1, max_retries=1, scheduling_strategy=THERE)
        def crash_once():
            first = not any(n.startswith("crash-") for n in os.listdir(MARKS))
            mark("crash")
            if first:
                os._exit(1)
            return np.ones(200_000)

        ref = crash_once.remote()
        while len([n for n in os.listdir(MARKS) if n.startswith("crash-")]) < 2:
            time.sleep(0.05)
        time.sleep(1.0)
        print("ready", flush=True)
        sys.stdin.readline()
        try:
            anyray.get(ref, timeout=60)
            raise AssertionError("a result was rebuilt beyond max_retries")
        except ObjectReconstructionFailedError as exc:
            assert exc.reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED", exc.reason
        print("done", flush=True)
    """)
    assert out.strip() == "done"
    assert runs(marks, "crash") == [other["node_id"]] * 2
