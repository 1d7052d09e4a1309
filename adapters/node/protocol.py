"""The task protocol's old home: its tags and helpers now live in ``messages`` (with a type per message).

A re-export, kept while modules of the cluster import it (``adapters/cluster``: ``__init__``, ``objects``,
``actors``, ``actor_calls``, ``placement``, ``view``); nothing of the node does.
"""

from .messages import (  # noqa: F401
    ACTOR,
    ACTOR_DIED,
    CANCEL,
    HANDLE,
    OBJECT,
    OUTPUT,
    REFS,
    REQUEST,
    RESPONSE,
    RESULT,
    TASK,
    contained_ids,
    dumps,
)
