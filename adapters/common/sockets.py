"""A listening TCP socket, shared by the node daemon's ports and the metrics endpoint."""

from __future__ import annotations

import socket


def listening(host: str, port: int, backlog: int, taken: str) -> socket.socket:
    """A socket listening on ``host:port`` (``port`` 0: a free one). When it cannot bind, ``OSError`` with
    ``taken`` formatted with ``host``, ``port`` and ``reason`` (the system's words): what to change."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, taken.format(host=host, port=port, reason=exc.strerror)) from None
    sock.listen(backlog)
    return sock
