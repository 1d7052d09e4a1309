"""Ray's memory monitor, per node: when the machine's (or the node's memory cgroup's) memory use passes
``RAY_memory_usage_threshold`` (default 0.95), checked every ``RAY_memory_monitor_refresh_ms`` (default 250;
0 turns the monitor off), the node kills one worker running a task, so that the kernel's OOM killer (which
may take any process, the node's own included) does not have to: a retriable task's worker first (a task
with ``max_retries`` other than 0), the most recently started first, and only once the last one it killed
is gone. The task is then run again after a backoff (``RAY_task_oom_retry_delay_base_ms``, default 1000,
doubled for each further memory kill of the task, at most ``MAX_BACKOFF_S``), so that the memory has time to
come back, its memory kills counted apart from ``max_retries`` as Ray counts them (``RAY_task_oom_retries``,
default -1: without end); a task that may not be retried, or whose memory
retries are spent, fails with ``OutOfMemoryError``. Among retriable tasks, those of the caller (the task or
driver that submitted them) with the most tasks running here go first, as Ray's default policy groups them
by owner. Actor processes are chosen too, by the same order (an
actor with restarts left under ``max_restarts`` counts as retriable): a killed actor restarts while
``max_restarts`` allows, its calls in flight failing with ``OutOfMemoryError`` (unless ``max_task_retries``
retries them); once it may not restart, it is dead and every call to it fails with ``OutOfMemoryError``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

from anyray.exceptions import OutOfMemoryError
from anyray.policy import allows_another

log = logging.getLogger(__name__)

THRESHOLD_ENV, REFRESH_ENV, OOM_RETRIES_ENV = ("RAY_memory_usage_threshold", "RAY_memory_monitor_refresh_ms",
                                               "RAY_task_oom_retries")
DELAY_ENV, DEFAULT_DELAY_MS, MAX_BACKOFF_S = "RAY_task_oom_retry_delay_base_ms", 1000, 60.0
DEFAULT_THRESHOLD, DEFAULT_REFRESH_MS, DEFAULT_OOM_RETRIES = 0.95, 250, -1
FIRST_LINE = "Task was killed due to the node running low on memory."  # Ray's first line, word for word
ACTOR_FIRST_LINE = "Actor was killed due to the node running low on memory."

_lock = threading.Lock()
_oom_kills: dict[bytes, int] = {}  # task id -> times its worker was killed for memory


def _number(name: str, default, kind):
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"${name} is a number ({kind.__name__}); got {text!r}.") from None


def settings() -> tuple[float, float, int]:
    """(threshold, refresh seconds, memory retries) from the environment, as Ray reads them."""
    threshold = _number(THRESHOLD_ENV, DEFAULT_THRESHOLD, float)
    if not 0 < threshold <= 1:
        raise ValueError(f"${THRESHOLD_ENV} is the fraction of memory in use past which tasks are killed, "
                         f"above 0 and at most 1; got {threshold}.")
    return threshold, _number(REFRESH_ENV, DEFAULT_REFRESH_MS, int) / 1000.0, _number(OOM_RETRIES_ENV,
                                                                                       DEFAULT_OOM_RETRIES, int)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def memory_usage() -> tuple[int, int]:
    """(bytes used, bytes total): the memory cgroup's when it has a limit (less its inactive file cache),
    else the machine's (total less available)."""
    limit, current = _read("/sys/fs/cgroup/memory.max"), _read("/sys/fs/cgroup/memory.current")
    if limit and limit.isdigit() and current and current.isdigit():
        inactive = 0
        for line in (_read("/sys/fs/cgroup/memory.stat") or "").splitlines():
            if line.startswith("inactive_file "):
                inactive = int(line.split()[1])
        return max(0, int(current) - inactive), int(limit)
    info = {}
    for line in (_read("/proc/meminfo") or "").splitlines():
        name, _, value = line.partition(":")
        info[name] = int(value.split()[0]) * 1024 if value.split() else 0
    total = info.get("MemTotal", 0)
    return total - info.get("MemAvailable", info.get("MemFree", 0)), total


def killed_for_memory(handle) -> str | None:
    """The monitor's message when it killed the worker of ``handle``, else None."""
    return getattr(handle, "oom_message", None)


def may_retry(spec) -> bool:
    """Whether a task whose worker was killed for memory runs again (counting this kill)."""
    if spec.options["max_retries"] == 0:
        return False
    retries = _number(OOM_RETRIES_ENV, DEFAULT_OOM_RETRIES, int)
    with _lock:
        kills = _oom_kills[spec.task_id] = _oom_kills.get(spec.task_id, 0) + 1
        if retries < 0 or kills <= retries:
            return True
        del _oom_kills[spec.task_id]
        return False


def retry_delay(kills: int) -> float:
    """Seconds before the ``kills``-th memory retry of a task runs: the base, doubled for each kill before."""
    base = _number(DELAY_ENV, DEFAULT_DELAY_MS, int)
    if base < 0:
        raise ValueError(f"${DELAY_ENV} is the delay before a task killed for memory runs again, in ms, at "
                         f"least 0; got {base}.")
    return min(base / 1000.0 * 2 ** max(kills - 1, 0), MAX_BACKOFF_S)


def after_backoff(spec, fn) -> None:
    """Call ``fn`` once the memory retry that ``may_retry`` just counted for ``spec`` has waited its backoff."""
    with _lock:
        kills = _oom_kills.get(spec.task_id, 1)
    timer = threading.Timer(retry_delay(kills), fn)  # on a thread of its own even at 0: the caller holds locks
    timer.daemon = True
    timer.name = "anyray-oom-backoff"
    timer.start()


def error(message: str) -> OutOfMemoryError:
    return OutOfMemoryError(message)


class MemoryMonitor:
    """Watches memory for one node's ``supervision`` (its ``workers``) on a thread of its own."""

    def __init__(self, supervision, threshold: float, refresh: float, retries: int, node_id: str = ""):
        self._supervision, self.threshold, self.refresh, self.retries = supervision, threshold, refresh, retries
        self._node_id = node_id
        self._started: dict[int, tuple[object, float]] = {}  # worker id -> (its task, when first seen running)
        self._victim = None  # the handle last killed, until it is gone
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anyray-memory-monitor", daemon=True)

    @classmethod
    def start_for(cls, supervision, node_id: str = "") -> MemoryMonitor | None:
        threshold, refresh, retries = settings()
        if refresh <= 0:
            return None
        monitor = cls(supervision, threshold, refresh, retries, node_id)
        monitor._thread.start()
        return monitor

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad reading
                log.exception("the memory monitor's check failed")

    def check(self) -> None:
        running = {}
        for worker in list(self._supervision.workers.values()):
            if worker.dead or worker.remote:
                continue
            subject = worker.task if worker.actor is None else worker.actor
            if subject is None or (worker.actor is not None and worker.actor.worker is not worker):
                continue  # an idle worker, or an actor's process that is not (or no longer) its own
            seen = self._started.get(worker.handle.worker_id)
            running[worker.handle.worker_id] = (subject, seen[1] if seen and seen[0] is subject else time.monotonic())
        self._started = running
        used, total = memory_usage()
        if not total or used / total <= self.threshold:
            return
        victim = self._victim
        if victim is not None and victim.exit is None:
            return  # the last one killed is not gone yet: its memory is not back either
        candidates = []
        for worker in list(self._supervision.workers.values()):
            entry = running.get(worker.handle.worker_id)
            if entry is not None and worker.handle.pid is not None:
                candidates.append((worker, *entry, _retriable(worker)))
        groups: dict = {}  # Ray's "group by owner": retriable tasks by their caller
        for worker, _subject, _since, retriable in candidates:
            if retriable and worker.actor is None:
                owner = worker.task.spec.parent_task_id
                groups[owner] = groups.get(owner, 0) + 1
        chosen = None
        for worker, subject, since, retriable in candidates:
            size = groups.get(worker.task.spec.parent_task_id, 1) if retriable and worker.actor is None else 1
            key = (retriable, size, since)  # retriable first, of the caller running the most, then the newest
            if chosen is None or key > chosen[0]:
                chosen = (key, worker, subject)
        if chosen is not None:
            self._kill(chosen[1], chosen[2], chosen[0][0], used, total)

    def _kill(self, worker, subject, retriable: bool, used: int, total: int) -> None:
        handle = worker.handle
        gib = 1 << 30
        what = "task" if worker.actor is None else "actor"
        name = subject.spec.name if worker.actor is None else subject.spec.cls.name
        handle.oom_message = (
            f"{FIRST_LINE if worker.actor is None else ACTOR_FIRST_LINE}\nMemory on the node (ID: "
            f"{self._node_id or 'this node'}) where the {what} {name} (pid {handle.pid}) was running was "
            f"{used / gib:.2f} GiB / {total / gib:.2f} GiB ({used / total:.3f}), past the memory usage threshold "
            f"of {self.threshold} (${THRESHOLD_ENV}). anyray killed this worker because its {what} was the most "
            f"recently started {'retriable ' if retriable else ''}one. Use less memory per {what}, run fewer at "
            f"once (num_cpus= or memory= on the {what}), or raise ${THRESHOLD_ENV}.")
        log.warning("%s", handle.oom_message.replace("\n", " "))
        self._victim = handle
        try:
            os.kill(handle.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _retriable(worker) -> bool:
    """Whether what ``worker`` runs comes back after a kill: a task with ``max_retries`` other than 0, an
    actor with restarts left (``max_restarts``)."""
    if worker.actor is None:
        return worker.task.spec.options["max_retries"] != 0
    actor = worker.actor
    return allows_another(actor.spec.options["max_restarts"], actor.restarts)
