"""Moved: a cluster node's scheduler is ``cluster/node.py`` and its parts (``view``, ``placement``,
``objects``, ``actors``, ``actor_calls``, ``records``). The names stay importable from here."""

from .actors import ACTORS
from .node import ClusterScheduler
from .records import ASK_SECONDS, JOBS_KEPT, OUTPUT_PER_JOB, RECORDS_PER_JOB
from .view import DEAD, DEAD_SECONDS, NODES, ClusterView

__all__ = ["ACTORS", "ASK_SECONDS", "DEAD", "DEAD_SECONDS", "JOBS_KEPT", "NODES", "OUTPUT_PER_JOB",
           "RECORDS_PER_JOB", "ClusterScheduler", "ClusterView"]
