"""The TaskPort: runs remote functions' tasks, cancels them, and stops."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from ..object_ref import ObjectRef
from ..specs import TaskSpec


class TaskPort(ABC):
    """Runs task specs the core has validated; owns resource accounting and placement.

    Results and failures of every task go to the spec's ``returns`` in the
    backend's ObjectStore: a failure is stored as a ``RemoteFailure`` value,
    so a reader of the ref raises it. Submission methods return at once.
    Methods may be called from any thread, including from inside tasks.

    Capability: ``runs_here = True`` declares :meth:`run_here`; the runtime
    reads the flag once and never calls the method otherwise.
    """

    runs_here: ClassVar[bool] = False

    @abstractmethod
    def submit_task(self, spec: TaskSpec) -> None:
        """Queue a task. It runs once its top-level ``deps`` are sealed and its
        resources are free; a task whose resources no node can ever provide
        warns once (naming the task and what is missing) and keeps waiting.
        Worker crashes are retried up to ``spec.max_retries``.

        A generator's task (``spec.options["num_returns"]`` "streaming" or "dynamic") has one return
        ref; its values stream through the object store by ``anyray.generators``' protocol, which the
        executor follows wherever it runs, so a backend only passes the call's ``StreamSpec`` on. An
        engine with streams of its own may instead return its own ``ObjectRefGenerator`` for a
        "streaming" task; otherwise this returns None."""

    @abstractmethod
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        """Cancel the task that produces ``ref``: a queued task never runs; a running
        one is interrupted (``force`` kills its worker where there are processes).
        Its returns then raise ``TaskCancelledError``. A finished task is left alone."""

    def run_here(self, refs) -> None:
        """Optional (``runs_here``). The calling thread is about to wait for ``refs``: run their
        producers here, if they are ready to run and not yet started. Returns once those it took are done."""
        raise NotImplementedError(f"{type(self).__name__} declares runs_here = False: it cannot run tasks "
                                  f"in a waiting thread.")

    def shutdown(self) -> None:  # noqa: B027 - a scheduler that only forwards to another process holds nothing
        """Stop every thread and process the scheduler started; idempotent. The backend's ``shutdown``
        calls it."""
