"""A cluster's placement group records (``adapters/cluster/group_records.py``) in real metadata stores:
in memory, Redis and etcd."""

from __future__ import annotations

import threading

import pytest
from servers import EtcdServer, RedisServer

from anyray import ids
from anyray.adapters.cluster.group_records import CREATED, REMOVED, GroupRecords, listing, new_record, table_row
from anyray.adapters.metadata.etcd import EtcdMetadataStore
from anyray.adapters.metadata.memory import MemoryMetadataStore
from anyray.adapters.metadata.redis import RedisMetadataStore
from anyray.ports.placement_groups import PlacementGroupSpec


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    redis = RedisServer.start(str(tmp_path_factory.mktemp("redis")))
    etcd = EtcdServer.start(str(tmp_path_factory.mktemp("etcd")))
    yield {"redis": redis, "etcd": etcd}
    redis.stop()
    etcd.stop()


@pytest.fixture(params=["memory", "redis", "etcd"])
def records(request, servers):
    if request.param == "memory":
        store = MemoryMetadataStore()
    elif request.param == "redis":
        store = RedisMetadataStore(servers["redis"].url, namespace=f"t-{request.node.name}")
    else:
        store = EtcdMetadataStore(servers["etcd"].url, namespace=f"t-{request.node.name}")
    yield GroupRecords(store)
    store.close()


def _group(records, name="", namespace="ns", strategy="PACK", bundles=({"CPU": 1.0}, {"CPU": 1.0}),
           lifetime=None) -> dict:
    spec = PlacementGroupSpec(list(bundles), strategy, name, namespace, lifetime)
    record = new_record(ids.new_id(), spec, "node-a", "job-1")
    records.add(record)
    return record


def test_a_group_s_record_is_in_its_table_shape_from_the_start(records):
    record = _group(records, name="g", bundles=({"CPU": 1.0}, {"Custom": 2.0}))
    row = table_row(records.get(record["id"]))
    assert row["placement_group_id"] == record["id"] and row["name"] == "g"
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"Custom": 2.0}}
    assert row["bundles_to_node_id"] == {0: "", 1: ""}
    assert row["state"] == "PENDING" and row["strategy"] == "PACK"
    assert [r["id"] for r in records.all()] == [record["id"]]


def test_updates_change_the_record_and_none_leaves_it(records):
    record = _group(records)
    placed = records.update(record["id"], lambda r: dict(r, state=CREATED, nodes=["a", "b"]))
    assert placed["state"] == CREATED
    row = table_row(records.get(record["id"]))
    assert row["state"] == "CREATED" and row["bundles_to_node_id"] == {0: "a", 1: "b"}
    assert row["stats"]["scheduling_state"] == "FINISHED"
    assert records.update(record["id"], lambda r: None)["state"] == CREATED
    assert records.update("00" * 16, lambda r: r) is None


def test_concurrent_updates_lose_nothing(records):
    record = _group(records)

    def bump():
        for _ in range(10):
            records.update(record["id"], lambda r: dict(r, attempts=r["attempts"] + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert records.get(record["id"])["attempts"] == 40


def test_a_name_is_taken_once_per_namespace_and_free_again_once_its_group_is_removed(records):
    first = _group(records, name="g")
    with pytest.raises(ValueError, match="already exists"):
        _group(records, name="g")
    other = _group(records, name="g", namespace="other")  # another namespace: another name
    assert records.find("g", "ns") == first["id"] and records.find("g", "other") == other["id"]
    records.update(first["id"], lambda r: dict(r, state=REMOVED))
    assert records.find("g", "ns") is None
    assert table_row(records.get(first["id"]))["state"] == "REMOVED"  # still in the table
    again = _group(records, name="g")
    assert records.find("g", "ns") == again["id"]


def test_two_writers_racing_for_a_name_one_wins(records):
    won, lost = [], []

    def make():
        try:
            won.append(_group(records, name="race"))
        except ValueError:
            lost.append(1)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 3


def test_names_with_any_characters_are_kept_apart(records):
    a = _group(records, name="a/b", namespace="x")
    b = _group(records, name="b", namespace="x/a")
    assert records.find("a/b", "x") == a["id"] and records.find("b", "x/a") == b["id"]


def test_a_listing_row_shows_what_a_person_needs(records):
    record = _group(records, name="g", strategy="STRICT_SPREAD", lifetime="detached")
    records.update(record["id"], lambda r: dict(r, state=CREATED, nodes=["aaaaaaaaaaaa", "bbbbbbbbbbbb"]))
    row = listing(records.get(record["id"]))
    assert row == {"placement_group_id": record["id"], "name": "g", "namespace": "ns", "state": "CREATED",
                   "strategy": "STRICT_SPREAD", "bundles": "CPU:1 CPU:1", "nodes": "aaaaaaaa,bbbbbbbb",
                   "detached": True}


def test_a_record_someone_else_wrote_badly_is_ignored(records):
    records.metadata.put("placement_groups/junk", b"not json")
    record = _group(records)
    assert [r["id"] for r in records.all()] == [record["id"]]
