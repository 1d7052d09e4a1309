"""Diagnostics under the ``anyray`` logger.

Every module logs through ``logging.getLogger(__name__)`` (their names all
start with ``anyray.``). Until the program configures logging itself, a
default handler on the ``anyray`` logger writes warnings and errors to
stderr as ``(anyray) message``, as a user of a library without logging
set up expects to see them; once the root logger has a handler, it steps
aside and the records reach the program's own handlers only. A node daemon
writes its log lines with a time and its pid (:func:`configure_daemon`).

What a task prints, and the one line about a failed task, are output for
the user, not diagnostics: they are written as they are.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("anyray")


class _DefaultHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (a worker replaces it), unless logging is configured."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("(anyray) %(message)s"))
        self.setLevel(logging.WARNING)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers and not _daemon:
            return  # the program's own handlers get it through the root logger
        super().emit(record)


_daemon = False
_default = next((h for h in logger.handlers if type(h).__name__ == "_DefaultHandler"), None)
if _default is None:
    _default = _DefaultHandler()
    logger.addHandler(_default)


def configure_daemon() -> None:
    """In a node daemon: every record from INFO up goes to its log (stderr), with a time and the pid."""
    global _daemon
    _daemon = True
    _default.setFormatter(logging.Formatter("[%(asctime)s] anyray node %(process)d: %(message)s", "%H:%M:%S"))
    _default.setLevel(logging.INFO)
    logger.setLevel(logging.INFO)


def set_driver_level(level, where: str = "init(): logging_level") -> None:
    """``init(logging_level=...)``, Ray's: the level of the ``anyray`` logger in the driver, and of what its
    default handler shows (a name such as ``"info"``, any case, or a number such as ``logging.DEBUG``)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())  # the number of a known name (else a string back)
    if isinstance(level, bool) or not isinstance(level, int):
        raise ValueError(f"{where} must be a logging level such as 'info', 'warning' or logging.DEBUG, got {level!r}.")
    logger.setLevel(level)
    _default.setLevel(level)
