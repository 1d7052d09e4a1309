"""Object spilling, as Ray does it: putting more than the object store holds, with every ref kept, works, and
every object reads back intact (in the driver and in a task); Ray's ``_system_config`` spelling of the spill
directory is accepted.

The store is 96 MB (Ray's minimum is 75 MB) and the objects 192 MB. Connected to a running cluster, a driver
cannot size the store (the nodes' ``anyray start`` did), so there the test reads back what it put against
whatever store the nodes have.
"""

import json

import numpy as np
import pytest

import anyray

pytestmark = pytest.mark.usefixtures("isolated_runtime")

MB = 1 << 20


@pytest.mark.timeout(300)
def test_more_than_the_store_holds_is_put_and_read_back(init_kwargs, tmp_path):
    kwargs = dict(init_kwargs)
    if "address" not in kwargs:
        kwargs["object_store_memory"] = 96 * MB
        kwargs["_system_config"] = {"object_spilling_config": json.dumps(
            {"type": "filesystem", "params": {"directory_path": str(tmp_path)}})}
    anyray.init(**kwargs)
    n = MB  # int64 elements: 8 MB an object
    refs = [anyray.put(np.arange(n, dtype=np.int64) + i) for i in range(24)]

    @anyray.remote
    def first_and_last(a):
        return int(a[0]), int(a[-1])

    assert anyray.get(first_and_last.remote(refs[0])) == (0, n - 1)
    for i, ref in enumerate(refs):
        value = anyray.get(ref)
        assert value[0] == i and value[-1] == n - 1 + i and value[n // 2] == n // 2 + i
        del value
