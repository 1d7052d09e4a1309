"""Rules every backend applies alike, written once: retry and restart limits.

A leaf module (it imports nothing of anyray), for the core and for every
adapter, built-in or a plugin's.
"""

from __future__ import annotations

UNLIMITED = -1  # max_retries, max_restarts, max_task_retries: no limit


def allows_another(limit: int, used: int) -> bool:
    """Whether one more retry (or restart) is allowed after ``used`` of them under ``limit`` (-1: no limit)."""
    return limit == UNLIMITED or used < limit


def call_retry_limit(call_options: dict, actor_options: dict) -> int:
    """How often an actor call runs again (after its actor restarted, or when it raised one of its
    ``retry_exceptions``): the method's ``max_task_retries``, else the actor's, as in Ray."""
    allowed = call_options.get("max_task_retries")
    if allowed is None:
        allowed = actor_options.get("max_task_retries")
    return allowed or 0
