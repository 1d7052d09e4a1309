"""The fencing between a node's renewals and the others declaring it dead (``cluster/lease.py``), on the
in-process metadata store, and how a store's ``Reach`` counts outages (a failing or an unanswered command).
The same logic against real Redis and etcd with real node daemons: ``tests/test_metadata_outage.py``."""

from __future__ import annotations

import threading
import time

from anyray.adapters.cluster.lease import DEAD, NODES, Deaths, Lease
from anyray.adapters.metadata import MemoryMetadataStore
from anyray.adapters.metadata.known import Reach

LEASE = 0.3


def node(store, node_id="n1"):
    lost: list[str] = []
    lease = Lease(store, node_id, lambda: b'{"node_id": "%s"}' % node_id.encode(), LEASE, lost.append)
    lease.register()
    return lease, lost


def deaths(store):
    dead: list[str] = []
    return Deaths(store, LEASE, present=lambda node_id: False, on_dead=lambda n, _record: dead.append(n)), dead


def test_a_node_declared_dead_has_its_renewal_refused_and_stops():
    store = MemoryMetadataStore()
    lease, lost = node(store)
    time.sleep(LEASE + 0.1)  # its record lapses (it did not renew)
    watcher, dead = deaths(store)
    watcher.lapsed("n1", {"node_id": "n1"})
    assert dead == ["n1"] and store.get(DEAD + "n1") is not None
    lease.renew()
    assert lost and "declared it dead" in lost[0]
    assert store.get(NODES + "n1") is None  # never written again


def test_a_node_that_wrote_its_record_again_first_is_not_declared_dead():
    store = MemoryMetadataStore()
    lease, lost = node(store)
    watcher, dead = deaths(store)
    watcher.lapsed("n1", {"node_id": "n1"})  # a lapse heard of while its record is there (again)
    assert dead == [] and store.get(DEAD + "n1") is None
    lease.renew()
    assert lost == []


def test_a_stopped_node_s_marker_counts_as_dead_for_everyone():
    store = MemoryMetadataStore()
    store.put(DEAD + "n2", b'{"ended": "stopped"}')
    watcher, dead = deaths(store)
    watcher.lapsed("n2", {"node_id": "n2"})
    assert dead == ["n2"]


def test_a_lapse_without_an_outage_seen_stops_the_node():
    store = MemoryMetadataStore()  # never unreachable: a lapse means this node was paused
    lease, lost = node(store)
    time.sleep(LEASE + 0.1)
    lease.lapsed()
    assert lost and "lease lapsed" in lost[0]


def test_reach_counts_failures_and_unanswered_commands_as_outages():
    reach = Reach()
    assert reach.outages() == [] and reach.reachable_for() == float("inf")
    reach.sent()
    reach.failed()
    assert reach.reachable_for() == 0.0 and reach.outages()[-1][1] is None
    reach.sent()
    reach.answered()
    assert reach.reachable_for() < 1.0 and len(reach.outages()) == 1
    done = threading.Event()

    def slow():  # a command the server leaves unanswered for longer than SLOW
        reach.sent()
        done.wait(10)
        reach.answered()

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(Reach.SLOW + 0.2)
    assert reach.reachable_for() == 0.0  # unanswered: an outage going on now
    done.set()
    t.join()
    began, ended = reach.outages()[-1]
    assert ended - began > Reach.SLOW and reach.reachable_for() < 1.0
