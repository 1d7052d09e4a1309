"""Reading a dashboard's JSON API from a program: ``anyray.util.state``'s ``list_*(address="http://HOST:8265")``
(Ray's state API takes the dashboard's address the same way).

The token goes in an ``Authorization: Bearer`` header, never in the URL: the one given, else
``$ANYRAY_CLUSTER_TOKEN``, else this machine's cluster token file (``anyray start`` wrote it).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request


def is_dashboard_address(address) -> bool:
    return isinstance(address, str) and address.startswith(("http://", "https://"))


def get_json(address: str, path: str, token: bytes | None = None, timeout: float = 30):
    """``GET address + path`` as a visitor holding the cluster token; its JSON answer."""
    if token is None:
        from ..cluster.files import read_token  # the token file of `anyray start`, found as drivers find it

        token = read_token()
    url = address.rstrip("/") + path
    request = urllib.request.Request(url, headers={"Authorization": "Bearer " + token.decode().strip(),
                                                   "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise PermissionError(f"The dashboard at {address} refused the cluster token this process holds: "
                                  f"pass the cluster's token file (set $ANYRAY_CLUSTER_TOKEN to its contents, or "
                                  f"run on the head's machine).") from None
        try:
            said = json.loads(exc.read()).get("error")
        except (ValueError, AttributeError):
            said = exc.reason
        raise ConnectionError(f"The dashboard at {address} answered {exc.code} to {path}: {said}") from None
    except urllib.error.URLError as exc:
        host = urllib.parse.urlsplit(address).netloc
        raise ConnectionError(f"No dashboard answers at {address} ({exc.reason}): is a head with a dashboard "
                              f"running at {host}? (`anyray start --head` serves one on port 8265)") from None


def list_rows(address: str, kind: str, timeout: float = 30) -> list[dict]:
    """The rows ``/api/<kind>`` lists (``kind``: nodes, actors, tasks, objects, workers, placement_groups, jobs)."""
    return get_json(address, f"/api/{kind}", timeout=timeout)
