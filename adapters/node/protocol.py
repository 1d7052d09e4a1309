"""The task protocol's old home: its tags and helpers now live in ``messages`` (with a type per message).

A re-export, kept while modules of other parts (the node and cluster schedulers) import it.
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
