"""The drivers that connected to this node: a cluster's jobs (in Ray, each ``init()`` connection is a job).

A node daemon notes each driver when it connects and when its connection ends, so the head's dashboard can show
every job of the cluster (its driver's pid and address, when it started and ended) by asking each node
(``list_here`` of ``drivers``). The rows have the fields of Ray's ``JobDetails`` of a driver job: ``status``
RUNNING while the driver is connected, SUCCEEDED after (as Ray says of a driver job whose driver ended).
"""

from __future__ import annotations

import collections
import threading
import time

ENDED_KEPT = 100  # drivers that ended this node still tells of (the latest)
_LOOPBACK = ("127.", "::1", "localhost")


def _entrypoint(pid: int) -> str | None:
    """The driver's command line, where it runs on this machine (Ray's ``entrypoint`` of a driver job)."""
    try:
        with open(f"/proc/{int(pid)}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return " ".join(a.decode("utf-8", "replace") for a in argv if a) or None


def _submission_id(pid: int) -> str | None:
    """The submission id of the job whose entrypoint started this driver (``anyray job submit``), where it runs
    on this machine: the head sets it in the job's environment."""
    try:
        with open(f"/proc/{int(pid)}/environ", "rb") as f:
            environ = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    for item in environ:
        if item.startswith(b"ANYRAY_JOB_SUBMISSION_ID="):
            return item.partition(b"=")[2].decode("utf-8", "replace") or None
    return None


class DriverTable:
    """The drivers of this node: ``joined`` when one connects, ``left`` when its connection ends, ``rows()``."""

    def __init__(self, node_id: str, node_ip: str):
        self.node_id, self.node_ip = node_id, node_ip
        self._live: dict[int, dict] = {}
        self._ended: collections.deque = collections.deque(maxlen=ENDED_KEPT)
        self._lock = threading.Lock()

    def joined(self, hello: dict, peer_ip: str, same_host: bool) -> dict:
        """Note a driver that connected (``hello``: its ``ClientHello``); the entry to pass to ``left``."""
        job = hello.get("job_id") or b""
        pid = hello.get("pid") or 0
        ip = self.node_ip if str(peer_ip).startswith(_LOOPBACK) else str(peer_ip)
        entry = {"job_id": job.hex() if isinstance(job, bytes) else str(job),
                 "submission_id": _submission_id(pid) if same_host else None,
                 "type": "DRIVER", "status": "RUNNING", "entrypoint": _entrypoint(pid) if same_host else None,
                 "start_time": int(time.time() * 1000), "end_time": None,
                 "driver_info": {"id": job.hex() if isinstance(job, bytes) else str(job), "node_ip_address": ip,
                                 "pid": str(pid)},
                 "driver_node_id": self.node_id, "namespace": hello.get("namespace") or ""}
        with self._lock:
            self._live[id(entry)] = entry
        return entry

    def left(self, entry: dict, ran: bool = True) -> None:
        """The driver of ``entry`` disconnected: its job ended (or, with ``ran=False``, its handshake failed
        and it never ran: it is forgotten)."""
        with self._lock:
            if self._live.pop(id(entry), None) is None or not ran:
                return
            entry["status"], entry["end_time"] = "SUCCEEDED", int(time.time() * 1000)
            self._ended.append(entry)

    def of_submission(self, submission_id: str) -> dict | None:
        """The latest driver a submitted job's entrypoint started here (connected or ended), or None."""
        with self._lock:
            found = [e for e in (*self._ended, *self._live.values()) if e["submission_id"] == submission_id]
        return dict(found[-1], driver_info=dict(found[-1]["driver_info"])) if found else None

    def rows(self) -> list[dict]:
        """Every driver of this node: those connected, then those that ended (oldest first)."""
        with self._lock:
            return [dict(e, driver_info=dict(e["driver_info"])) for e in (*self._live.values(), *self._ended)]
