"""Dashboard sign-in: the session cookie (an API token the browser keeps HttpOnly), CSRF tokens for every form,
and the local page to return to after signing in."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

SESSION_COOKIE = "medannot_session"
# Before there is a session, the sign-in form is bound to this random cookie (double submit): a page on another
# site can neither read it nor, with SameSite=Strict, make the browser send it.
SIGNIN_COOKIE = "medannot_signin"
_CSRF_PURPOSE = b"medannot dashboard form"


def csrf_token(session_token: str) -> str:
    """The CSRF token of every form of one session: an HMAC keyed by the session's secret token, so it changes
    with each sign-in (a form from an earlier session is stale) and needs no server-side state (several server
    processes agree on it). It is not the stored token hash, so the database does not reveal it."""
    return hmac.new(session_token.encode(), _CSRF_PURPOSE, hashlib.sha256).hexdigest()


def new_signin_nonce() -> str:
    return secrets.token_urlsafe(24)


def same_token(expected: str | None, given: str | None) -> bool:
    """Constant-time equality of two tokens; a missing one never matches."""
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this server (``/projects/1?status=final``), else ``/``: after sign-in the
    browser is never sent to another site (``//evil.example``, ``https://...``, ``/\\evil``, control
    characters a browser would strip)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target
