"""Object spilling: sealed objects nobody reads move from the shared-memory arena to files on local disk.

When the arena cannot fit a new object, the owner's store asks its ``Spiller`` to make room: sealed
objects that no process reads (no pin: no view alive in the driver, no worker holding their location)
are written to a spill directory, least recently sealed or read first, and their ranges freed, until
the allocation fits. A read of a spilled object (the driver's ``get``, a task's argument, a worker's
``get``, another node's pull) restores it into the arena, spilling others if needed; a reader that
cannot map the arena (another node, a driver on another machine) is served straight from the file.
Only when nothing is left to spill, or the disk is full or not writable, does the allocation raise
``ObjectStoreFullError``.

Each node spills into a directory of its own, ``<root>/anyray-<pid>-<random>`` (mode 0700, files
0600), made on the first spill and locked with ``flock`` as a node session is (``session.Session``):
it is removed at shutdown, and a later node spilling under the same root removes those whose owner
died. A file is removed when its object is restored or freed.

Configuration follows Ray's ``_system_config``: ``object_spilling_config`` (a JSON string
``{"type": "filesystem", "params": {"directory_path": DIR}}``), ``object_spilling_directory`` and
``automatic_object_spilling_enabled``; ``anyray start --object-spilling-directory`` sets
``$ANYRAY_OBJECT_SPILLING_DIRECTORY`` for its node. By default a node spills under
``<temp dir>/anyray-spill-<uid>``.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
import threading

from anyray.exceptions import ObjectLostError, ObjectStoreFullError
from anyray.serialization import SerializedObject

from .session import Session, remove_stale_sessions

ENV_DIRECTORY = "ANYRAY_OBJECT_SPILLING_DIRECTORY"
_IO_CHUNK = 1 << 30


def default_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"anyray-spill-{os.getuid()}")


def spill_root(system_config: dict | None) -> str | None:
    """The directory a node spills under, from Ray's ``_system_config`` keys (then the environment, then
    the default); None when spilling is turned off. Raises ``ValueError`` for a config anyray cannot use."""
    cfg = system_config or {}
    if not isinstance(cfg, dict):
        raise TypeError(f"init(): _system_config must be a dict, got {type(cfg).__name__}.")
    enabled = cfg.get("automatic_object_spilling_enabled", True)
    if not isinstance(enabled, bool):
        raise TypeError("init(): _system_config['automatic_object_spilling_enabled'] must be True or False, "
                        f"got {enabled!r}.")
    if not enabled:
        return None
    directory = cfg.get("object_spilling_directory") or None
    if directory is None and cfg.get("object_spilling_config"):
        directory = _directory_of(cfg["object_spilling_config"])
    directory = directory or os.environ.get(ENV_DIRECTORY) or None
    if directory is not None and not isinstance(directory, str):
        raise TypeError(f"init(): the object spilling directory must be a path (a string), got {directory!r}.")
    return os.path.abspath(os.path.expanduser(directory)) if directory else default_root()


def _directory_of(config) -> str:
    """``directory_path`` of Ray's ``object_spilling_config`` (a JSON string; a dict is taken too)."""
    try:
        spec = json.loads(config) if isinstance(config, (str, bytes)) else config
    except ValueError as exc:
        raise ValueError(f"init(): _system_config['object_spilling_config'] is not valid JSON ({exc}); pass "
                         'json.dumps({"type": "filesystem", "params": {"directory_path": "/some/dir"}}).') from exc
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind != "filesystem":
        raise ValueError(f"init(): object_spilling_config type {kind!r} is not supported: anyray spills to a local "
                         'directory only; pass {"type": "filesystem", "params": {"directory_path": "/some/dir"}}.')
    path = (spec.get("params") or {}).get("directory_path")
    if isinstance(path, list):  # Ray spreads over several directories; anyray uses the first
        path = path[0] if path else None
    if not isinstance(path, str) or not path:
        raise ValueError("init(): object_spilling_config needs params.directory_path, the directory to spill to, "
                         f"got {path!r}.")
    return path


def clean_stale(root: str | None) -> None:
    """Remove the spill directories under ``root`` that nodes which died left behind."""
    if root is not None and os.path.isdir(root):
        remove_stale_sessions(root)


class SpillDir:
    """The files of one node's spilled objects: ``<root>/anyray-<pid>-<random>``, made on first use."""

    def __init__(self, root: str):
        self.root = root
        self._session: Session | None = None
        self.bytes = 0  # on disk now
        self.files = 0

    @property
    def path(self) -> str | None:
        return None if self._session is None else self._session.path

    def _dir(self) -> str:
        if self._session is None:
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            if self.root == default_root():  # in the shared temp dir: it must be this user's own
                info = os.lstat(self.root)
                if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
                    raise PermissionError(errno.EPERM, f"{self.root} is not a directory of this user's that others "
                                                       "cannot write to; remove it, or choose another directory")
            self._session = Session(self.root)  # removes what dead nodes left here, then locks its own
        return self._session.path

    def write(self, oid: bytes, view: memoryview) -> str:
        """Write ``view`` to a new 0600 file named after ``oid``; return its path. Raises OSError (a partial
        file is removed)."""
        path = os.path.join(self._dir(), oid.hex())
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        try:
            done, n = 0, view.nbytes
            while done < n:
                done += os.write(fd, view[done:done + _IO_CHUNK])
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        self.bytes += view.nbytes
        self.files += 1
        return path

    @staticmethod
    def read_into(path: str, dest: memoryview) -> None:
        with open(path, "rb", buffering=0) as f:
            done = 0
            while done < dest.nbytes:
                n = f.readinto(dest[done:done + _IO_CHUNK])
                if not n:
                    raise ObjectLostError(f"The spill file {path} is shorter than its object: it was changed "
                                          "outside anyray.")
                done += n

    def remove(self, path: str, nbytes: int) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.bytes -= nbytes
        self.files -= 1

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


class Spiller:
    """A store's spilling policy and mechanism. ``io`` serializes spills and restores (file I/O runs under
    it, never under the store's pin lock or the node's lock); the pin lock orders them with readers."""

    def __init__(self, store, root: str):
        self.store = store
        self.dir = SpillDir(root)
        self.io = threading.RLock()
        self.spilled: dict[bytes, object] = {}  # object id -> its ArenaObject, while on disk
        self.spilled_total = self.restored_total = 0  # bytes moved each way, for figures

    # -- making room ------------------------------------------------------------------
    def make_room(self, reserve, nbytes: int):
        """``reserve()`` (an arena allocation that just failed) retried after each object spilled, oldest
        first, until it fits; ``ObjectStoreFullError`` when nothing is left to spill.

        No exception is kept in a local: its traceback would hold this frame and the callers' (a ``get``'s
        views among them) in a cycle, keeping ranges pinned until the garbage collector runs."""
        if nbytes > self.store.arena.capacity:
            return reserve()  # larger than the whole store: spilling cannot help (it raises)
        with self.io:
            while True:
                self.store._apply_unpins()
                try:
                    return reserve()
                except ObjectStoreFullError as exc:
                    message = str(exc)
                victim = self._victim()
                if victim is None:
                    raise ObjectStoreFullError(
                        f"{message} Spilling to {self.dir.root} did not help: every object left in shared memory is "
                        "being read (a get's arrays or a task's arguments are alive); drop some of them, or pass "
                        "a larger object_store_memory to init().") from None
                self._spill(victim)

    def _victim(self):
        store = self.store
        with store._pin_lock:
            for entry in store._lru.values():
                if not entry.pins and not entry.freed and entry.loc is not None:
                    entry.pins += 1  # held while written out: nobody frees the range under the write
                    return entry
        return None

    def _spill(self, entry) -> None:
        store = self.store
        loc = entry.loc
        try:
            path = self.dir.write(entry.oid, store.arena.view(loc.offset, loc.nbytes))
        except OSError as exc:
            store.unpin(entry)
            where = self.dir.path or self.dir.root
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                why = f"the disk of {where} is full too"
            else:
                why = f"spilling to {where} failed ({exc.strerror or exc})"
            raise ObjectStoreFullError(
                f"Cannot store an object: shared memory is full and {why}. Free disk space there, point "
                'spilling at a larger disk (_system_config={"object_spilling_config": json.dumps({"type": '
                '"filesystem", "params": {"directory_path": DIR}})}, or anyray start --object-spilling-directory '
                "DIR), drop refs you no longer need, or pass a larger object_store_memory to init().") from exc
        with store._pin_lock:
            entry.pins -= 1
            moved = entry.pins == 0 and not entry.freed
            release = entry.pins == 0 and entry.freed  # freed while written: its release fell to this thread
            if moved:
                entry.loc = None
                entry.spilled = (path, loc._replace(offset=0))
                store._lru.pop(entry.oid, None)
                self.spilled[entry.oid] = entry
        if moved:
            store.arena.free(loc.offset)
            self.spilled_total += loc.nbytes
            return
        self.dir.remove(path, loc.nbytes)  # read meanwhile (it stays in memory) or freed
        if release:
            store._release_range(entry)

    # -- reading back -------------------------------------------------------------------
    def restore(self, entry):
        """Bring a spilled ``entry`` (pinned by the caller) back into the arena; return its new location."""
        store = self.store
        with self.io:
            with store._pin_lock:
                if entry.loc is not None:  # restored by another reader meanwhile
                    return entry.loc
                path, layout = entry.spilled
            grant = store.reserve(layout.nbytes)  # may spill others; never this one (it has no range)
            try:
                self.dir.read_into(path, store.arena.receive_view(grant.offset, layout.nbytes))
            except BaseException:
                store.arena.free(grant.offset)
                raise
            loc = layout._replace(offset=grant.offset)
            with store._pin_lock:
                entry.loc, entry.spilled = loc, None
                self.spilled.pop(entry.oid, None)
                if not entry.freed:
                    store._lru[entry.oid] = entry
            self.dir.remove(path, layout.nbytes)
            self.restored_total += layout.nbytes
            return loc

    def copy(self, entry) -> SerializedObject | None:
        """A pinned, spilled ``entry`` read from its file into this process's memory (for a reader that
        cannot map the arena, or when the arena cannot take it back); None if it was restored meanwhile."""
        with self.io:
            if entry.loc is not None:
                return None
            path, layout = entry.spilled
            buf = bytearray(layout.nbytes)
            self.dir.read_into(path, memoryview(buf))
        view = memoryview(buf)
        spans = layout.spans()
        return SerializedObject(bytes(view[:layout.data_len]), [view[s:s + n] for s, n in spans[1:]])

    def discard(self, entry) -> None:
        """A spilled ``entry`` was freed (and nothing reads it): its file goes."""
        with self.io:
            with self.store._pin_lock:
                spilled, entry.spilled = entry.spilled, None
                self.spilled.pop(entry.oid, None)
            if spilled is not None:
                self.dir.remove(spilled[0], spilled[1].nbytes)

    def spilled_ids(self) -> list[bytes]:
        with self.store._pin_lock:
            return list(self.spilled)

    def usage(self) -> dict:
        return {"spilled_objects": self.dir.files, "spilled_bytes": self.dir.bytes,
                "spill_directory": self.dir.path or self.dir.root,
                "spilled_total": self.spilled_total, "restored_total": self.restored_total}

    def close(self) -> None:
        with self.io:
            self.dir.close()
