"""Fixtures shared by the test modules here."""

from __future__ import annotations

import os

import pytest

import anyray
from anyray.adapters.cluster import files
from anyray.adapters.cluster.launch import kill_tree

CLUSTER_HEARTBEAT = 0.25  # seconds; a node's lease is three heartbeats


@pytest.fixture
def cluster_env(tmp_path, monkeypatch):
    """The environment of a private cluster: its own cluster directory, fast heartbeats, no token from the
    caller's environment. Every node daemon started in it is stopped afterwards, and a driver the test
    started in this process is shut down (one a module's fixture started before it is left running)."""
    directory = tmp_path / "cluster"
    monkeypatch.setenv("ANYRAY_CLUSTER_DIR", str(directory))
    monkeypatch.setenv("ANYRAY_HEARTBEAT_SECONDS", str(CLUSTER_HEARTBEAT))
    monkeypatch.delenv("ANYRAY_CLUSTER_TOKEN", raising=False)
    running_before = anyray.is_initialized()
    yield dict(os.environ)
    if anyray.is_initialized() and not running_before:
        anyray.shutdown()
    for record in files.local_nodes(str(directory)):
        kill_tree(record["pid"])
