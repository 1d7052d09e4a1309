"""The machinery of one node, shared by the multiprocess and cluster backends.

A session directory in shared memory (``session``), worker processes forked
from a fork server over an authenticated channel (``forkserver``,
``workers``), and a shared-memory arena for the object store (``arena``).
"""
