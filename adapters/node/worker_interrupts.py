"""A worker's cancels: the CANCEL message, the SIGINT the node sends after it, and what the link holds back.

The node sends CANCEL, then SIGINT. The main thread runs user code, so the
SIGINT handler reads what has arrived and raises ``KeyboardInterrupt`` in
the task if its cancel is there (the task then fails with
``TaskCancelledError``). While the main thread sends a message or waits for
an answer, the interrupt is held and lands once the message is out or the
answer in (the link calls ``land``), so no message is cut in half.
"""

from __future__ import annotations

import collections
import pickle
import signal
import threading

from .link import Interrupts


class TaskInterrupts(Interrupts):
    """The cancel state of the task a worker's main thread runs."""

    def __init__(self, node):
        super().__init__()
        self.node = node
        self.running = False         # the main thread runs a task
        self.cancel = False          # a cancel of that task was read
        self.current: bytes | None = None  # the task the main thread runs
        self.early: collections.deque = collections.deque(maxlen=64)  # cancels of tasks not current

    def land(self) -> None:
        self.on_sigint(signal.SIGINT, None)

    def raise_pending(self) -> None:
        if self.cancel and self.running:
            self.cancel = False
            raise KeyboardInterrupt("The task was cancelled.")  # as Ray: `except Exception` does not catch it

    def on_cancel(self, payload) -> None:
        """CANCEL: the task id to interrupt, if it is the one running."""
        task_id = pickle.loads(payload)
        if task_id != self.current or not self.running:
            self.early.append(task_id)  # not started yet (or finished: then never looked up)
            return
        self.cancel = True
        main = self.node.main_thread
        if threading.get_ident() != main:
            signal.pthread_kill(main, signal.SIGINT)  # the main thread raises it

    def on_sigint(self, signum, frame) -> None:
        """A cancel while the main thread runs user code (the node sends SIGINT after CANCEL).

        Reads what has arrived, unless another thread reads now (that one passes a cancel on as
        another SIGINT), and raises ``KeyboardInterrupt`` in the task if its cancel is there. A cancel
        that comes while the main thread sends a message waits until the message is out."""
        inline = self.node.inline
        if not self.running and (inline is None or inline.running is None):
            return  # between tasks: nothing to cancel
        if self.sending or self.pumping:
            # Handled once the message is out, or once the answer is in: the pump may read that answer
            # before the cancel and stop reading, so it looks again when it is done.
            self.held = True
            return
        if not self.cancel:  # nothing dispatched here sends, so an interrupted send is never re-entered
            self.node.read_arrived()
        self.raise_pending()
