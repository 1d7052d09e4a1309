"""The session's shared-memory arena: allocation, and objects read zero-copy across processes."""

import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from anyray.adapters.node.arena import ALIGN, Allocator, Arena, Grant, Location
from anyray.adapters.node.session import Session
from anyray.exceptions import ObjectStoreFullError
from anyray.serialization import deserialize, serialize

MB = 1 << 20


@pytest.fixture
def session():
    s = Session()
    yield s
    s.close()


def run_child(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_allocations_are_aligned_disjoint_and_counted():
    alloc = Allocator(1 * MB)
    offsets = [alloc.allocate(n) for n in (1, 100, 64, 0, 1000)]
    assert all(o % ALIGN == 0 for o in offsets)
    ends = sorted((o, o + alloc.size_of(o)) for o in offsets)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(ends, ends[1:]))
    assert alloc.count == 5 and alloc.used == 64 + 128 + 64 + 64 + 1024


def test_freed_ranges_coalesce_and_are_reused_before_new_space():
    alloc = Allocator(1 * MB)
    a, b, c, d = (alloc.allocate(1024) for _ in range(4))
    high = alloc.high_water
    alloc.free(a)
    alloc.free(c)
    alloc.free(b)  # joins a and c into one range of 3 KiB
    assert alloc.allocate(3 * 1024) == a
    assert alloc.high_water == high
    alloc.free(a)
    assert alloc.allocate(100) == a  # best fit takes a freed range, not the untouched tail
    assert alloc.high_water == high and alloc.count == 2
    with pytest.raises(ValueError, match="No allocated range"):
        alloc.free(a + 64)
    alloc.free(a)
    alloc.free(d)
    assert alloc.used == 0 and alloc.count == 0
    assert alloc.allocate(4 * 1024) == 0  # everything coalesced back into one range


def test_a_freed_range_at_the_high_water_mark_grows_into_new_space():
    alloc = Allocator(8 * 1024)
    a = alloc.allocate(1024)
    b = alloc.allocate(1024)
    alloc.free(b)
    assert alloc.allocate(4096) == b
    assert alloc.high_water == b + 4096
    assert alloc.allocate(1024) == b + 4096 and a == 0


def test_random_allocations_never_overlap_and_all_frees_coalesce():
    rng = np.random.default_rng(0)
    alloc = Allocator(4 * MB)
    live = {}
    for _ in range(3000):
        if live and (rng.random() < 0.45 or len(live) > 200):
            offset = list(live)[rng.integers(len(live))]
            alloc.free(offset)
            del live[offset]
        else:
            try:
                offset = alloc.allocate(int(rng.integers(0, 64 * 1024)))
            except ObjectStoreFullError:
                continue
            live[offset] = alloc.size_of(offset)
        spans = sorted(live.items())
        assert all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:]))
        assert alloc.used == sum(live.values())
    for offset in live:
        alloc.free(offset)
    assert alloc.allocate(alloc.high_water) == 0


def test_an_allocation_that_cannot_get_pages_changes_nothing():
    def no_room(old, new):
        raise ObjectStoreFullError("no room on /dev/shm")

    alloc = Allocator(1 * MB, on_grow=no_room)
    with pytest.raises(ObjectStoreFullError, match="no room"):
        alloc.allocate(100)
    assert (alloc.used, alloc.count, alloc.high_water) == (0, 0, 0)


def test_a_full_arena_raises_object_store_full_with_what_to_do(session):
    arena = Arena.create(session, 4 * MB)
    arena.put(serialize(np.zeros(3 * MB, dtype=np.uint8)))
    with pytest.raises(ObjectStoreFullError, match=r"(?s)2,097,152 bytes.*of 4,194,304 bytes are used by 1 objects"
                                                   r".*drop refs.*object_store_memory"):
        arena.reserve(2 * MB)
    assert arena.usage()["objects"] == 1
    arena.close()


def test_a_full_dev_shm_raises_object_store_full_instead_of_crashing(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np
        from anyray.adapters.node.arena import Arena
        from anyray.adapters.node.session import Session
        from anyray.exceptions import ObjectStoreFullError
        from anyray.serialization import serialize
        arena = Arena.create(Session(root={str(tmp_path)!r}), 64 << 20)
        try:
            arena.put(serialize(np.ones(8 << 20, dtype=np.uint8)))
        except ObjectStoreFullError as exc:
            print(exc, arena.usage())
    """)
    mount = 'mount -t tmpfs -o size=4m tmpfs "$1" && exec "$2" -c "$3"'
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -rm to mount a small tmpfs in a private mount namespace")
    argv = ["unshare", "-rm", "sh", "-c", mount, "sh", str(tmp_path), sys.executable, code]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "has no room for 8,388,736 more bytes" in proc.stdout and "smaller object_store_memory" in proc.stdout
    assert "'objects': 0, 'bytes': 0" in proc.stdout and "'high_water': 0" in proc.stdout


def test_an_array_written_by_the_owner_is_read_zero_copy_and_read_only_in_another_process(session):
    arena = Arena.create(session, 64 * MB)
    value = {"a": np.arange(2 * MB, dtype=np.int32), "label": "x"}  # 8 MB
    loc = arena.put(serialize(value))
    out = run_child(f"""
        import pickle, numpy as np
        from anyray.adapters.node.arena import Arena
        from anyray.serialization import deserialize
        arena = Arena.attach({arena.path!r})
        loc = pickle.loads({pickle.dumps(loc)!r})
        value = deserialize(arena.read(loc))
        a = value["a"]
        assert value["label"] == "x"
        assert np.array_equal(a, np.arange(2 * 1024 * 1024, dtype=np.int32))
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        assert type(base.base.obj).__name__ == "mmap"  # the array is a view of the arena: no copy
        assert not a.flags.writeable
        try:
            a[0] = 1
        except ValueError:
            print("write refused")
        try:
            a.flags.writeable = True
        except ValueError:
            print("flag refused")
        try:
            arena.write(loc, None)
        except PermissionError:
            print("arena read-only")
    """)
    assert out.split("\n")[:3] == ["write refused", "flag refused", "arena read-only"]
    arena.close()


def test_the_owner_reads_what_a_child_wrote_into_a_granted_range(session):
    arena = Arena.create(session, 64 * MB)
    arena.put(serialize(np.ones(MB, dtype=np.uint8)))  # the child's range starts past used pages
    grant = arena.reserve(5 * MB)
    out = run_child(f"""
        import pickle, numpy as np
        from anyray.adapters.node.arena import Arena
        from anyray.serialization import serialize
        arena = Arena.attach({arena.path!r}, writable=True)
        grant = pickle.loads({pickle.dumps(grant)!r})
        loc = arena.write(grant, serialize(np.full(4 * 1024 * 1024, 7, dtype=np.uint8)))
        print(pickle.dumps(loc).hex())
    """)
    loc = pickle.loads(bytes.fromhex(out.strip()))
    assert isinstance(loc, Location) and loc.offset == grant.offset
    got = deserialize(arena.read(loc))
    assert got.shape == (4 * MB,) and (got == 7).all() and not got.flags.writeable
    arena.close()


def test_a_reused_range_holds_the_new_object_across_the_fresh_boundary(session):
    arena = Arena.create(session, 16 * MB)
    first = arena.put(serialize(np.full(2 * MB, 1, dtype=np.uint8)))
    arena.free(first.offset)
    value = np.arange(3 * MB // 8, dtype=np.int64)
    obj = serialize(value)
    grant = arena.reserve(Location.of(obj).nbytes)  # 2 MB of reused pages, then never-used ones
    assert grant.offset == 0 and 0 < grant.fresh_from < grant.offset + grant.nbytes
    loc = arena.write(grant, obj)
    assert np.array_equal(deserialize(arena.read(loc)), value)
    with pytest.raises(ValueError, match="does not fit"):
        arena.write(Grant(0, 64, 0), serialize(value))
    arena.close()


def test_the_arena_file_is_removed_with_the_session():
    session = Session()
    arena = Arena.create(session, 8 * MB)
    arena.put(serialize(np.ones(MB, dtype=np.uint8)))
    assert os.path.exists(arena.path) and os.path.dirname(arena.path) == session.path
    arena.close()
    session.close()
    assert not os.path.exists(arena.path)


def test_a_large_arena_takes_no_memory_until_written(session):
    arena = Arena.create(session, 1 << 30)
    assert os.path.getsize(arena.path) == 1 << 30
    assert os.stat(arena.path).st_blocks * 512 < MB
    arena.put(serialize(np.ones(4 * MB, dtype=np.uint8)))
    assert 4 * MB <= os.stat(arena.path).st_blocks * 512 < 8 * MB
    arena.close()
