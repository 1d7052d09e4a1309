"""Passwords out of what the cluster says: ``redact`` hides the user and password of every URL in a text
(a leaf module: the address resolver and the client both use it)."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s'\"]*@")


def redact(text) -> str:
    """``text`` with the user and password of every URL in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: m.group("scheme") + "***@", str(text))
