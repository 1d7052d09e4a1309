"""A node's worker process: now ``worker_main`` (with ``worker_actor``, ``worker_interrupts`` and
``worker_output``). A re-export, kept while modules of other parts (the node scheduler) import it.
"""

from .worker_main import WorkerBackend, WorkerNode, install  # noqa: F401
