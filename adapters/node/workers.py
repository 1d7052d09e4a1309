"""Worker processes of one node: now ``framing`` (both sides), ``worker_loop`` (the worker's) and ``pool``
(the node's). A re-export, kept while a module of the cluster (``cluster/daemon.py``) imports it;
the worker loop's names load only when asked for, so the node's side does not import the worker's.
"""

from .framing import *  # noqa: F401,F403
from .framing import CALL_HEAD as _CALL_HEAD  # noqa: F401
from .framing import REPLY_HEAD as _REPLY_HEAD  # noqa: F401
from .framing import wake as _wake  # noqa: F401
from .pool import *  # noqa: F401,F403
from .pool import EXIT_REPORT_GRACE, WorkerExit, WorkerHandle, WorkerPool, describe  # noqa: F401

_WORKER_SIDE = {"WorkerLoop", "current_loop", "worker_main"}


def __getattr__(name: str):
    if name in _WORKER_SIDE:
        from . import worker_loop

        return getattr(worker_loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
