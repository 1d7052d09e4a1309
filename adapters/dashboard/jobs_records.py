"""The head's job records in the cluster's metadata store (``jobs/<submission_id>``), as Ray keeps them in GCS:
a head started again on the same store (an external Redis or etcd) lists the jobs of the one before it. A job
that was still running when that head went is listed FAILED, as it ended with its head.

Each value is the JSON of the job's details, signed with the cluster token (HMAC-SHA256), so a record written by
anyone else in the store is ignored. The store is best effort here: a job runs on while it is unreachable.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

PREFIX = "jobs/"
log = logging.getLogger("anyray.jobs")


class JobRecords:
    def __init__(self, store, token: bytes):
        self._store = store
        self._token = token

    def _seal(self, details: dict) -> bytes:
        body = json.dumps(details, default=str).encode()
        return hmac.new(self._token, body, hashlib.sha256).hexdigest().encode() + b"\n" + body

    def _open(self, value: bytes) -> dict | None:
        mac, _, body = value.partition(b"\n")
        if not hmac.compare_digest(mac, hmac.new(self._token, body, hashlib.sha256).hexdigest().encode()):
            log.warning("ignored a job record in the metadata store that no head of this cluster signed")
            return None
        try:
            return json.loads(body)
        except ValueError:
            return None

    def save(self, details: dict) -> None:
        try:
            self._store.put(PREFIX + details["submission_id"], self._seal(details))
        except Exception as exc:  # noqa: BLE001 - the job goes on; its record is the store's to lose
            log.warning("could not record job %s in the metadata store: %s", details["submission_id"], exc)

    def drop(self, submission_id: str) -> None:
        try:
            self._store.delete(PREFIX + submission_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not remove job %s from the metadata store: %s", submission_id, exc)

    def earlier(self) -> dict[str, dict]:
        """The jobs of the heads before this one; those they left running are marked FAILED (and saved so)."""
        found = {}
        try:
            items = list(self._store.scan(PREFIX))
        except Exception as exc:  # noqa: BLE001
            log.warning("could not read the earlier jobs from the metadata store: %s", exc)
            return found
        for _key, value in items:
            details = self._open(value)
            if details is None or not details.get("submission_id"):
                continue
            if details.get("status") not in ("STOPPED", "SUCCEEDED", "FAILED"):
                details.update(status="FAILED", message="The head that ran this job stopped before the job ended.",
                               error_type="JOB_SUPERVISOR_ACTOR_DIED", end_time=int(time.time() * 1000), pid=None)
                self.save(details)
            found[details["submission_id"]] = details
        return found
