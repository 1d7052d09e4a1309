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

import pytest
from node_parts import JOB, NodeParts
from test_cluster import WAIT, cli, kill_node, start_head, status_nodes, two_nodes, wait_until

from anyray.adapters.cluster import files
from anyray.adapters.cluster.lineage import Lineage, max_lineage_bytes
from anyray.adapters.cluster.objects import RemoteObjects
from anyray.adapters.node import messages as m
from anyray.adapters.node.arena import Location
from anyray.adapters.node.tasks import Task
from anyray.exceptions import ObjectReconstructionFailedLineageEvictedError, OwnerDiedError
from anyray.object_ref import ObjectRef
from anyray.options import TASK_DEFAULTS
from anyray.serialization import SerializedObject
from anyray.specs import FunctionDescriptor, TaskSpec

PRELUDE = """
    import os, sys, time
    import numpy as np
    import anyray
    from anyray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    anyray.init(backend="cluster", address="auto")
    MARKS = {marks!r}
    THERE = NodeAffinitySchedulingStrategy({other!r}, soft=True)  # the other node while it has room

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
    head, other = two_nodes(cluster_env, ("--num-cpus", "2"), ("--num-cpus", "6", "--resources", '{"There": 1}'))
    marks = tmp_path / "marks"
    marks.mkdir()
    out, _ = run_driver(cluster_env, head, other, marks, """
        from anyray.exceptions import ObjectLostError, ObjectReconstructionFailedError, OwnerDiedError

        @anyray.remote(num_cpus=1)
        def double(box):  # its argument inside a list: read on the node it runs on
            mark("double")
            return anyray.get(box[0]) * 2

        @anyray.remote(num_cpus=1, resources={"There": 1})
        def put_there():
            return [anyray.put(np.ones(200_000))]  # owned by a worker of the other node

        kept = make.options(scheduling_strategy=THERE).remote("kept", 7)
        once = make.options(scheduling_strategy=THERE, max_retries=0).remote("once", 1)
        a = make.options(scheduling_strategy=THERE).remote("a", 3)
        b = double.options(scheduling_strategy=THERE).remote([a])
        del a  # b's lineage keeps a's
        early = make.options(scheduling_strategy=THERE).remote("early", 5)
        inner = anyray.get(put_there.remote())[0]
        done("kept", "once", "a", "double", "early")
        print("ready", flush=True)
        time.sleep(0.3)  # the test kills the other node now; its lease has not lapsed yet
        assert (anyray.get(early, timeout=120) == 5).all()  # the pull fails, then the rebuild is read
        sys.stdin.readline()

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
    assert runs(marks, "early") == [there, here]


def test_a_rebuild_counts_against_max_retries(cluster_env, tmp_path):
    """max_retries=1: the task's node dies while it runs (its one retry runs elsewhere), then the node
    holding the result dies too: no run is left to rebuild it with."""
    head = start_head(cluster_env, "--num-cpus", "1")
    for _ in range(2):
        cli(cluster_env, "start", "--address", head["address"], "--num-cpus", "1", "--resources", '{"W": 1}')
    wait_until(lambda: len(status_nodes(cluster_env)) == 3, "three nodes")
    nodes = {r["node_id"]: r for r in files.local_nodes(cluster_env["ANYRAY_CLUSTER_DIR"])}
    marks = tmp_path / "marks"
    marks.mkdir()
    code = textwrap.dedent(PRELUDE.format(marks=str(marks), other=head["node_id"])) + textwrap.dedent("""
        from anyray.exceptions import ObjectReconstructionFailedError

        @anyray.remote(num_cpus=1, max_retries=1, resources={"W": 1})
        def slow():
            mark("slow")
            while not os.path.exists(os.path.join(MARKS, "go")):
                time.sleep(0.05)
            return np.ones(200_000)

        ref = slow.remote()
        for stage in (1, 2):
            while len([n for n in os.listdir(MARKS) if n.startswith("slow-")]) < stage:
                time.sleep(0.05)
            time.sleep(1.0)
            print(f"ran {stage}", flush=True)
            sys.stdin.readline()  # the test kills the node it ran on now
        try:
            anyray.get(ref, timeout=60)
            raise AssertionError("a result was rebuilt beyond max_retries")
        except ObjectReconstructionFailedError as exc:
            assert exc.reason == "OBJECT_UNRECONSTRUCTABLE_MAX_ATTEMPTS_EXCEEDED", exc.reason
            assert "max_retries=1" in str(exc), exc
        print("done", flush=True)
    """)
    run = subprocess.Popen([sys.executable, "-c", code], env=cluster_env, stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for stage in (1, 2):
            line = run.stdout.readline()
            assert line.strip() == f"ran {stage}", line + run.stderr.read()
            ran_on = runs(marks, "slow")[-1]
            kill_node(nodes[ran_on])
            wait_until(lambda ran_on=ran_on: ran_on not in status_nodes(cluster_env), "the killed node's lease")
            (marks / "go").write_text("")  # the retry elsewhere may finish
            run.stdin.write("\n")
            run.stdin.flush()
        out, err = run.communicate(timeout=WAIT * 2)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert out.strip() == "done"
    first, second = runs(marks, "slow")
    assert first != second and head["node_id"] not in (first, second)


def test_a_get_of_a_result_whose_task_still_waits_for_its_node_is_answered(cluster_env, tmp_path):
    """The soak's hang: a ``get`` asked while the task was still queued here (its node busy) was not
    remembered, so the large result, once made there, stayed there and the ``get`` waited forever."""
    head, other = two_nodes(cluster_env, ("--num-cpus", "2"), ("--num-cpus", "1", "--resources", '{"There": 1}'))
    marks = tmp_path / "marks"
    marks.mkdir()
    code = textwrap.dedent(PRELUDE.format(marks=str(marks), other=other["node_id"])) + textwrap.dedent("""
        @anyray.remote(num_cpus=1, resources={"There": 1})
        def busy():
            mark("busy")
            time.sleep(2.0)

        @anyray.remote(num_cpus=1, resources={"There": 1})
        def make_there(value):
            return np.full(200_000, value, dtype=np.int64)

        for round in range(3):
            blocker = busy.remote()
            done("busy")  # the other node's one slot is taken: the next task waits on the head
            for name in os.listdir(MARKS):
                os.unlink(os.path.join(MARKS, name))
            ref = make_there.remote(round)
            assert (anyray.get(ref, timeout=30) == round).all()
            anyray.get(blocker, timeout=30)
        print("done", flush=True)
    """)
    run = subprocess.run([sys.executable, "-c", code], env=cluster_env, capture_output=True, text=True,
                         timeout=WAIT * 2)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "done"


# -- the lineage part alone, over a real store: what it keeps and for how long ----------------------------


def _handed_task(parts, i: int, max_retries: int = 3, payload: bytes = b"x" * 64):
    """A task this node handed to node "there", finished there with one large result: its ``Task`` and the
    ``GotWithRefs`` answer that came back."""
    fn = FunctionDescriptor(b"fn", "make", len)
    oid = i.to_bytes(8, "big") + b"\x01" * 20
    spec = TaskSpec(task_id=i.to_bytes(8, "big") + b"\x00" * 16, function=fn, args=SerializedObject(payload),
                    deps=[], returns=[ObjectRef(oid)], resources={"CPU": 1.0},
                    options={**TASK_DEFAULTS, "max_retries": max_retries}, name="make")
    task = Task(spec, None, JOB)
    task.state = "forwarded"
    return task, [m.GotWithRefs.pack(oid, Location(0, 8, 2 << 20), [])]


@pytest.fixture
def lineage_parts():
    parts = NodeParts({"CPU": 2.0})
    objects = RemoteObjects("here", parts.lock, parts.store, parts.tasks, parts.ledger, None)
    yield parts, objects
    parts.close()


def test_lineage_is_forgotten_with_the_last_reference_to_its_results(lineage_parts):
    """100,000 tasks whose results were kept elsewhere and then dropped leave nothing behind."""
    parts, objects = lineage_parts
    objects.lineage = lineage = Lineage(parts.lock, parts.store, parts.tasks, objects)
    for i in range(100_000):
        task, got = _handed_task(parts, i)
        kept = lineage.keep(task, "there", got)
        assert kept and objects.where(next(iter(kept))) == "here"  # other nodes ask the owner's node
        assert objects.remote[next(iter(kept))] == "there"
        parts.store.free(list(kept))  # what the counter does once the last reference goes
    assert len(lineage) == 0 and lineage.nbytes == 0 and not lineage.owns(next(iter(kept)))
    assert not objects.remote


def test_lineage_over_its_bound_drops_the_oldest_and_their_loss_says_so(lineage_parts):
    parts, objects = lineage_parts
    objects.lineage = lineage = Lineage(parts.lock, parts.store, parts.tasks, objects, max_bytes=10_000)
    ids = []
    for i in range(100):
        task, got = _handed_task(parts, i, payload=b"x" * 1000)
        ids.extend(lineage.keep(task, "there", got))
    assert lineage.nbytes <= 10_000 and 0 < len(lineage) < 100
    error = lineage.lost(ids[0], "there")
    assert isinstance(error, ObjectReconstructionFailedLineageEvictedError)
    assert error.reason == "OBJECT_UNRECONSTRUCTABLE_LINEAGE_EVICTED" and "RAY_max_lineage_bytes" in str(error)
    assert lineage.lost(ids[-1], "there") is None  # still described: submitted again
    assert parts.tasks.has_task(ids[-1])
    assert isinstance(lineage.lost(b"\x09" * 28, "there"), OwnerDiedError)  # not a result of ours


def test_a_bad_lineage_bound_says_what_to_set(monkeypatch):
    monkeypatch.setenv("RAY_max_lineage_bytes", "lots")
    with pytest.raises(ValueError, match="RAY_max_lineage_bytes='lots' is not a number of bytes"):
        max_lineage_bytes()
    monkeypatch.setenv("RAY_max_lineage_bytes", "2048")
    assert max_lineage_bytes() == 2048
