"""A worker process's bare main loop: connect to the node, then run the handler of each message's tag.

The fork server runs ``worker_main`` in each process it forks. The node then
CALLs ``worker_main.install(setup)`` (see ``messages``), which extends this
loop, or takes the connection over, to become a node worker.
"""

from __future__ import annotations

import logging
import os
import pickle
import traceback
from collections.abc import Callable
from multiprocessing.connection import Client

import cloudpickle

from . import messages as m
from .framing import frame
from .messages import CALL, EXIT, HELLO, REPLY

log = logging.getLogger(__name__)

_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _dumps(value) -> bytes:
    return pickle.dumps(value, 5) if type(value) in _PLAIN else cloudpickle.dumps(value, 5)


class WorkerLoop:
    """One worker's main loop: receive a message, run the handler of its tag, in order, on this thread."""

    def __init__(self, conn, worker_id: int):
        self.conn = conn
        self.worker_id = worker_id
        self.handlers: dict[int, Callable[[memoryview], None]] = {CALL: self._call}
        # Set by a handler that takes the connection over: ``serve`` returns and the main thread runs
        # ``takeover()``, which reads the connection itself from then on.
        self.takeover: Callable[[], None] | None = None

    def send(self, tag: int, payload=b"") -> None:
        self.conn.send_bytes(frame(tag, payload))

    def serve(self) -> None:
        """Serve until the driver goes or says EXIT, or a handler sets ``takeover`` (then return at once)."""
        recv, handlers = self.conn.recv_bytes, self.handlers
        try:
            while True:
                try:
                    msg = recv()
                except (EOFError, OSError):
                    break  # the driver is gone
                tag = msg[0]
                if tag == EXIT:
                    break
                handler = handlers.get(tag)
                if handler is None:
                    log.error("worker %s got a message it has no handler for (tag %s)", self.worker_id, tag)
                    continue
                handler(memoryview(msg)[1:])
                if self.takeover is not None:
                    return
        except BaseException:
            log.exception("worker %s stopped reading its connection", self.worker_id)

    def _call(self, payload: memoryview) -> None:
        """The minimal protocol: run a pickled callable, reply with its pickled value or error."""
        request = payload[:8]
        try:
            call = m.Invoke._make(pickle.loads(payload[8:]))
            status, body = 0, _dumps(call.fn(*call.args, **call.kwargs))
        except BaseException as exc:  # noqa: BLE001 - everything the callable raised goes back
            status, body = 1, _dump_error(exc)
        self.conn.send_bytes(b"".join((bytes((REPLY,)), request, bytes((status,)), body)))


def _dump_error(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        body = cloudpickle.dumps((exc, text), 5)
        pickle.loads(body)  # an exception whose __init__ differs from its args pickles but cannot load
        return body
    except Exception:
        return cloudpickle.dumps((RuntimeError(f"{type(exc).__name__}: {exc}"), text), 5)


_loop: WorkerLoop | None = None


def current_loop() -> WorkerLoop | None:
    """This worker process's loop (None outside a worker): what a CALLed setup function extends."""
    return _loop


def worker_main(address: str, secret: bytes, worker_id: int) -> int:
    """Connect to the driver (authenticated), introduce this worker, serve until told to exit or the driver goes."""
    conn = Client(address, family="AF_UNIX", authkey=secret)
    conn.send_bytes(frame(HELLO, pickle.dumps(m.WorkerHello.pack(worker_id, os.getpid()))))
    global _loop
    loop = _loop = WorkerLoop(conn, worker_id)
    try:
        loop.serve()
        if loop.takeover is not None:
            loop.takeover()
    finally:
        conn.close()
    return 0

