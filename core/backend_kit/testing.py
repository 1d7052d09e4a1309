"""Contract tests a backend runs against its own stores (imports pytest).

``MetadataStoreContract`` holds the MetadataStore port's tests, written once
for every adapter, built in or a plugin's. A test class mixes it in and
provides a ``store`` fixture (the fsspec pattern)::

    from anyray.backend_kit.testing import MetadataStoreContract

    class TestMyStore(MetadataStoreContract):
        watch_poll = 0.1  # my store's watch polls every 0.1 s

        @pytest.fixture
        def store(self):
            store = MyStore(...)
            yield store
            store.close()

Every key a test writes starts with its ``key_prefix`` (a fixture, unique
per test), so a store shared by the tests of a session (an engine's KV)
never sees one test's keys in another; a fixture may delete the prefix
afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

WAIT = 10.0  # seconds a watch event may take to arrive


class Events:
    """Collects watch callbacks and lets a test wait for a given one."""

    def __init__(self):
        self.seen: list[tuple[str, bytes | None]] = []
        self._cond = threading.Condition()

    def __call__(self, key, value):
        with self._cond:
            self.seen.append((key, value))
            self._cond.notify_all()

    def wait_for(self, event, timeout=WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: event in self.seen, timeout)


class MetadataStoreContract:
    """The MetadataStore port's contract. Subclasses provide a ``store`` fixture.

    ``watch_poll``: seconds between the polls of a store whose watch polls
    (``PollingWatch``), 0 for one whose watch is pushed every change. A polling
    watch reports the state of a key at each poll, not every write in between,
    so the ordering test waits for each change before making the next.
    """

    watch_poll: float = 0.0

    @pytest.fixture
    def key_prefix(self) -> str:
        return f"contract-{uuid.uuid4().hex[:12]}/"

    def test_put_get_delete(self, store, key_prefix):
        k = key_prefix + "a/1"
        assert store.get(k) is None
        store.put(k, b"one")
        assert store.get(k) == b"one"
        store.put(k, b"uno")
        assert store.get(k) == b"uno"
        assert store.delete(k) is True
        assert store.get(k) is None
        assert store.delete(k) is False

    def test_scan_returns_the_prefix_sorted(self, store, key_prefix):
        for key in ("n/b", "n/a", "n/c", "m/a", "nn/x"):
            store.put(key_prefix + key, key.encode())
        assert list(store.scan(key_prefix + "n/")) == [
            (key_prefix + "n/a", b"n/a"), (key_prefix + "n/b", b"n/b"), (key_prefix + "n/c", b"n/c")]
        assert list(store.scan(key_prefix + "zzz/")) == []

    def test_compare_and_set(self, store, key_prefix):
        lock = key_prefix + "lock"
        assert store.compare_and_set(lock, None, b"me") is True      # only if absent: a new key
        assert store.compare_and_set(lock, None, b"you") is False    # only if absent: a present key
        assert store.compare_and_set(lock, b"you", b"x") is False    # wrong expectation
        assert store.compare_and_set(lock, b"me", b"me2") is True
        assert store.get(lock) == b"me2"
        assert store.compare_and_set(lock, b"me2", None) is True     # delete
        assert store.get(lock) is None

    def test_compare_and_set_lets_exactly_one_of_many_threads_win(self, store, key_prefix):
        wins = []
        barrier = threading.Barrier(8)
        leader = key_prefix + "leader"

        def contend(i):
            barrier.wait()
            if store.compare_and_set(leader, None, str(i).encode()):
                wins.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert len(wins) == 1
        assert store.get(leader) == str(wins[0]).encode()

    def test_watch_sees_puts_and_deletes_under_its_prefix_in_order(self, store, key_prefix):
        events = Events()
        w = key_prefix + "w/"
        watch = store.watch(w, events)
        steps = [(lambda: store.put(w + "1", b"a"), (w + "1", b"a")),
                 (lambda: store.put(key_prefix + "other/1", b"ignored"), None),
                 (lambda: store.put(w + "1", b"b"), (w + "1", b"b")),
                 (lambda: store.delete(w + "1"), (w + "1", None))]
        for step, event in steps:
            step()
            if self.watch_poll and event is not None:
                assert events.wait_for(event)
        assert events.wait_for((w + "1", None))
        assert events.seen == [(w + "1", b"a"), (w + "1", b"b"), (w + "1", None)]
        watch.cancel()
        store.put(w + "2", b"after cancel")
        time.sleep(max(0.2, 3 * self.watch_poll))
        assert (w + "2", b"after cancel") not in events.seen
        watch.cancel()  # idempotent

    def test_compare_and_set_writes_reach_watchers(self, store, key_prefix):
        events = Events()
        watch = store.watch(key_prefix, events)
        try:
            assert store.compare_and_set(key_prefix + "c", None, b"x")
            assert events.wait_for((key_prefix + "c", b"x"))
            assert store.compare_and_set(key_prefix + "c", b"x", None)
            assert events.wait_for((key_prefix + "c", None))
        finally:
            watch.cancel()

    def test_a_key_with_a_ttl_expires_and_watchers_hear_of_it(self, store, key_prefix):
        events = Events()
        lease = key_prefix + "lease/"
        watch = store.watch(lease, events)
        try:
            store.put(lease + "node1", b"alive", ttl=0.5)
            store.put(lease + "node2", b"alive", ttl=60)
            assert store.get(lease + "node1") == b"alive"
            assert events.wait_for((lease + "node1", None))
            assert store.get(lease + "node1") is None
            assert list(store.scan(lease)) == [(lease + "node2", b"alive")]  # gone from scans too
            assert store.get(lease + "node2") == b"alive"
        finally:
            watch.cancel()

    def test_putting_a_key_again_renews_its_ttl(self, store, key_prefix):
        k = key_prefix + "lease/n"
        store.put(k, b"1", ttl=1.0)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # heartbeat faster than the ttl
            store.put(k, b"1", ttl=1.0)
            time.sleep(0.1)
        assert store.get(k) == b"1"


__all__ = ["Events", "MetadataStoreContract", "WAIT"]
