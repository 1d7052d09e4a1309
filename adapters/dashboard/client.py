"""Reading a dashboard's JSON API from a program: ``anyray.util.state``'s ``list_*(address="http://HOST:8265")``
(Ray's state API takes the dashboard's address the same way).

The token goes in an ``Authorization: Bearer`` header, never in the URL: the one given, else
``$ANYRAY_CLUSTER_TOKEN``, else this machine's cluster token file (``anyray start`` wrote it).

A TLS cluster's dashboard (``https://``) must show a certificate of the cluster's CA: the CA this process's TLS
files name (``$ANYRAY_TLS_CA``, Ray's ``RAY_TLS_CA_CERT``, or a TLS node's of this machine); with none, the
system's trusted CAs (a dashboard behind a proxy with a public certificate).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request


def is_dashboard_address(address) -> bool:
    return isinstance(address, str) and address.startswith(("http://", "https://"))


def tls_context(address: str) -> tuple[ssl.SSLContext | None, str | None]:
    """The context to reach ``address`` with (None for http), and the cluster CA file it trusts (None: the
    system's CAs)."""
    if not address.startswith("https://"):
        return None, None
    from ..cluster import tls

    files = tls.client_files()
    if files is None:
        return ssl.create_default_context(), None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the CA is the cluster's own: any certificate it signed is a member's (cluster/tls)
    ctx.load_verify_locations(cafile=files.ca)
    return ctx, files.ca


def get_json(address: str, path: str, token: bytes | None = None, timeout: float = 30):
    """``GET address + path`` as a visitor holding the cluster token; its JSON answer."""
    return call_json(address, "GET", path, token=token, timeout=timeout)


def call_json(address: str, method: str, path: str, body=None, token: bytes | None = None, timeout: float = 30):
    """``method address + path`` (``body``: sent as JSON) as a visitor holding the cluster token; its JSON
    answer. ``PermissionError`` if the token is refused, ``ConnectionError`` for no answer or an error status."""
    if token is None:
        from ..cluster.files import read_token  # the token file of `anyray start`, found as drivers find it

        token = read_token()
    url = address.rstrip("/") + path
    headers = {"Authorization": "Bearer " + token.decode().strip(), "Accept": "application/json"}
    data = None
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    context, ca = tls_context(address)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:
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
        raise ConnectionError(f"The dashboard at {address} answered {exc.code} to {method} {path}: {said}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            trusted = f"the cluster CA {ca}" if ca else "the system's CAs (this process has no cluster TLS files)"
            raise ConnectionError(f"The dashboard at {address} showed a certificate that {trusted} did not sign "
                                  f"({exc.reason.verify_message}): set $ANYRAY_TLS_CA to the cluster's CA "
                                  f"certificate.") from None
        host = urllib.parse.urlsplit(address).netloc
        raise ConnectionError(f"No dashboard answers at {address} ({exc.reason}): is a head with a dashboard "
                              f"running at {host}? (`anyray start --head` serves one on port 8265)") from None


def list_rows(address: str, kind: str, timeout: float = 30) -> list[dict]:
    """The rows ``/api/<kind>`` lists (``kind``: nodes, actors, tasks, objects, workers, placement_groups, jobs)."""
    return get_json(address, f"/api/{kind}", timeout=timeout)
