"""GPUs and accelerator types: each task gets GPU ids of its own, and CUDA_VISIBLE_DEVICES says which.

Proves, on a private runtime of the backend under test started with two
GPUs (counted, not probed: no GPU is needed), that concurrent tasks asking
for one GPU each get distinct ids from ``get_gpu_ids()``, that in worker
processes ``CUDA_VISIBLE_DEVICES`` names exactly those ids, that a task
asking for no GPU sees none, and that ``accelerator_type`` asks for the
resource ``accelerator_type:<TYPE>``, as in Ray: a node that has it runs the
task, and with none the task waits with a warning.
"""

import os

import pytest

import anyray
from anyray.conformance.helpers import DEADLINE, Barrier
from anyray.exceptions import InfeasibleTaskWarning, TaskCancelledError


def private_kwargs(init_kwargs, **extra) -> dict:
    """Start the backend under test on this machine (not the cluster given by address), with ``extra``."""
    kwargs = {k: v for k, v in init_kwargs.items() if k not in ("address", "num_cpus", "num_gpus", "resources")}
    return {**kwargs, "num_cpus": 4, **extra}


@anyray.remote(num_gpus=1)
def gpus_seen(barrier):
    anyray.get(barrier.arrive.remote())  # both tasks hold their GPU at once
    return anyray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


@anyray.remote(num_gpus=0)
def no_gpu():
    return anyray.get_gpu_ids()


@pytest.mark.requires("concurrent")
def test_concurrent_tasks_get_distinct_gpu_ids(isolated_runtime, backend_class):
    anyray.init(**private_kwargs(isolated_runtime, num_gpus=2))
    assert anyray.cluster_resources()["GPU"] == 2
    barrier = Barrier.remote(2)
    (ids_a, visible_a, pid_a), (ids_b, visible_b, pid_b) = anyray.get(
        [gpus_seen.remote(barrier), gpus_seen.remote(barrier)], timeout=DEADLINE * 2)
    assert len(ids_a) == len(ids_b) == 1
    assert set(ids_a).isdisjoint(ids_b)
    assert {str(i) for i in ids_a + ids_b} == {"0", "1"}
    if "processes" in backend_class.capabilities:  # a worker process of its own: the variable is its own too
        assert pid_a != pid_b
        assert visible_a == ",".join(map(str, ids_a)) and visible_b == ",".join(map(str, ids_b))
    assert anyray.get(no_gpu.remote(), timeout=DEADLINE) == []
    assert anyray.get_gpu_ids() == []  # the driver holds none


def test_accelerator_type_runs_where_a_node_has_that_type(isolated_runtime):
    anyray.init(**private_kwargs(isolated_runtime, num_gpus=1, resources={"accelerator_type:T4": 1}))

    @anyray.remote(num_gpus=1, accelerator_type="T4")
    def on_a_t4():
        return "ran"

    assert anyray.get(on_a_t4.remote(), timeout=DEADLINE) == "ran"
    assert anyray.get(on_a_t4.options(accelerator_type=None).remote(), timeout=DEADLINE) == "ran"

    @anyray.remote(accelerator_type="T4")
    class OnAT4:
        def where(self):
            return "here"

    assert anyray.get(OnAT4.remote().where.remote(), timeout=DEADLINE) == "here"


def test_accelerator_type_no_node_has_warns_and_waits(anyray_session):
    @anyray.remote(accelerator_type="NoSuchAccelerator")
    def needs_an_accelerator():
        return "ran"

    with pytest.warns(InfeasibleTaskWarning, match=r"needs_an_accelerator.*accelerator_type:NoSuchAccelerator"):
        ref = needs_an_accelerator.remote()
    ready, _ = anyray.wait([ref], timeout=0.5)
    assert ready == []
    anyray.cancel(ref)
    with pytest.raises(TaskCancelledError):
        anyray.get(ref, timeout=DEADLINE)
