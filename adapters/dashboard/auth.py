"""Who may see the dashboard: a visitor who proved they hold the cluster token.

The login form posts the token once; the answer sets a cookie holding a session value derived from the token and
a secret of this dashboard process (HMAC-SHA256), never the token itself. The cookie is HttpOnly (no script reads
it) and SameSite=Strict (no other site's page sends it). Programs may instead send the token in an
``Authorization: Bearer`` header. Every comparison is constant-time. The token never appears in a URL, a log line
or an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from http.cookies import CookieError, SimpleCookie

COOKIE = "anyray_dashboard"


class Gatekeeper:
    """Checks logins, cookies and bearer headers against one token."""

    def __init__(self, token: bytes, derive=None):
        """``derive``: turns what a visitor typed into a token too (a head's: the token of a cluster started with
        ``--redis-password``, from that password), so the password logs in where it derives the token."""
        if not token:
            raise ValueError("The dashboard needs the cluster token to check visitors; got an empty one.")
        self._token = token
        self._derive = derive
        # a restart of the dashboard ends every session: the value depends on this process's secret
        self._session = hmac.new(secrets.token_bytes(32), b"anyray-dashboard-session:" + token,
                                 hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # the token and the session value stay out of reprs and tracebacks
        return "Gatekeeper(<token>)"

    def token_matches(self, offered: str | bytes) -> bool:
        if isinstance(offered, str):
            offered = offered.strip().encode("utf-8", "replace")
        return hmac.compare_digest(offered, self._token)

    def login_matches(self, offered: str) -> bool:
        """What the login form posted: the token, or what ``derive`` turns into it."""
        if self.token_matches(offered):
            return True
        return self._derive is not None and bool(offered) and hmac.compare_digest(self._derive(offered), self._token)

    def session_cookie(self) -> str:
        """The Set-Cookie header value a successful login answers with."""
        return f"{COOKIE}={self._session}; Path=/; HttpOnly; SameSite=Strict"

    @staticmethod
    def logout_cookie() -> str:
        return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"

    def allows(self, headers) -> bool:
        """Whether a request carries the session cookie or the token as a bearer."""
        bearer = headers.get("Authorization") or ""
        if bearer.startswith("Bearer ") and self.token_matches(bearer[len("Bearer "):]):
            return True
        raw = headers.get("Cookie")
        if not raw:
            return False
        try:
            cookie = SimpleCookie(raw)
        except CookieError:
            return False
        morsel = cookie.get(COOKIE)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self._session.encode())
