"""The machinery of one node, shared by the multiprocess and cluster backends.

A session directory in shared memory (``session``), worker processes forked
from a fork server over an authenticated channel (``forkserver``, ``pool``),
named wire messages (``messages``) in frames (``framing``), and a
shared-memory arena for the object store (``arena``). Modules named
``worker_*`` run only in worker processes (the fork server preloads them).
"""
