"""How a node and the processes it serves frame their messages: both sides of every connection use this.

Every message is one ``multiprocessing.connection`` frame (length-prefixed
bytes): one tag byte, then a payload whose shape the tag fixes. The tags and
the body of each are in ``messages``: 1-4 the bare worker loop's, 5-15 the
task protocol, 16-31 between the pool and the fork server, 32-34 a cluster
client's handshake. Later protocols take new tags and register handlers on
both ends; the framing stays.
"""

from __future__ import annotations

import importlib
import os
import select
import socket
import struct
import time

SOCKET_NAME = "workers.sock"
CALL_HEAD = struct.Struct("<BQ")    # CALL: tag, request id
REPLY_HEAD = struct.Struct("<BQB")  # REPLY: tag, request id, status (0 value, 1 error)


def frame(tag: int, payload=b"") -> bytes:
    return bytes((tag,)) + payload


def wake(conn) -> None:
    """Make a thread blocked reading ``conn`` see EOF, without closing the fd under it."""
    try:
        sock = socket.socket(fileno=os.dup(conn.fileno()))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


SPIN_SECONDS = 100e-6  # how long a reader polls before it sleeps: a reply within it skips a wake-up


LOAD_SECONDS = 1.0  # how often a process looks at the machine's CPU pressure (spin_budget)
CONTENDED = 0.15    # the share of the time threads waited for a CPU above which readers do not spin
_PSI = "/proc/pressure/cpu"  # the kernel's pressure stall information: "some avg10=... total=<us>"
_load = [0.0, SPIN_SECONDS, None]  # [when it looked last, the spin it allows, the stall total then]


def spin_budget() -> float:
    """``SPIN_SECONDS``, or 0 on a saturated machine: there a spinning reader takes the core the sender
    needs, and a blocking wait is sooner. Saturated: since the last look (each second), runnable threads
    waited for a CPU more than ``CONTENDED`` of the time (the kernel's CPU pressure, which measures now:
    the load average, used where the kernel has none, stays high for a minute after a burst ends)."""
    now = time.monotonic()
    if now - _load[0] > LOAD_SECONDS:
        _load[1] = 0.0 if _saturated(now) else SPIN_SECONDS
        _load[0] = now
    return _load[1]


def _saturated(now: float) -> bool:
    try:
        with open(_PSI, "rb") as f:
            some = f.readline().split()
        total = int(some[-1].partition(b"=")[2])
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0] > (os.cpu_count() or 1)
        except OSError:
            return False
    before, _load[2] = _load[2], total
    if before is None:  # the first look: nothing measured yet (the kernel's 10 s average would still hold
        return False    # the end of a burst that is over)
    return (total - before) / ((now - _load[0]) * 1e6) > CONTENDED


def spin_until_readable(fd: int, seconds: float = SPIN_SECONDS) -> bool:
    """Poll ``fd`` without sleeping for up to ``seconds``: on an idle core a reply that is on its way
    arrives sooner than the thread would wake from a blocking wait (tens of microseconds on a VM). On a
    saturated machine, one look (``spin_budget``)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    seconds = min(seconds, spin_budget())
    deadline = time.perf_counter() + seconds
    while True:
        if poller.poll(0):
            return True
        if time.perf_counter() > deadline:
            return False


def run_entry(module: str, name: str, *args):
    """Import ``module`` and call its ``name(*args)``: what a node CALLs in a worker, named by module path,
    so the node never imports the worker's side to send it (cloudpickle sends this function by reference)."""
    return getattr(importlib.import_module(module), name)(*args)
