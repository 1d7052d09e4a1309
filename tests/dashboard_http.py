"""HTTP helpers for the dashboard's tests: plain requests that follow no redirect, and a logged-in session."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse


def request(url: str, method: str, path: str, body: str | None = None, headers: dict | None = None, context=None):
    """``(status, headers, body bytes)`` of one request, redirects not followed (``context``: an https URL's
    ``ssl.SSLContext``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=60, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.headers, answer.read()
    finally:
        conn.close()


def login(url: str, token: str, context=None) -> str:
    """Log in with the form as a browser does; the Cookie header the answer sets."""
    status, headers, _ = request(url, "POST", "/login", urllib.parse.urlencode({"token": token}),
                                 {"Content-Type": "application/x-www-form-urlencoded"}, context)
    assert status == 303, status
    return headers["Set-Cookie"].split(";")[0]


def get_json(url: str, path: str, cookie: str, context=None):
    status, _headers, body = request(url, "GET", path, headers={"Cookie": cookie}, context=context)
    assert status == 200, (status, body[:500])
    return json.loads(body)


def wait_for(predicate, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
