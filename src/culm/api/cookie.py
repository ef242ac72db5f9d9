"""The dashboard's sign-in cookie: what the auth middleware accepts instead of a bearer key.

Signing in with ``CULM_API_KEY`` (``POST /dashboard/session``) sets ``culm_session``, an
HttpOnly, SameSite=Strict cookie holding an expiry time and an HMAC of it keyed by the API key:
the key itself never sits in the browser, changing the key signs every browser out, and nothing
is stored on the server. A request that the cookie (not a bearer key) authenticates must also
carry the header ``X-Culm-CSRF`` when it is not a read (``GET``/``HEAD``/``OPTIONS``): a form
on another site cannot set a custom header, and a cross-origin script that tries is stopped by
the CORS preflight this server never approves. A WebSocket the cookie authenticates must come
from this server's own origin.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from http.cookies import CookieError, SimpleCookie

COOKIE = "culm_session"
CSRF_HEADER = "x-culm-csrf"
LIFETIME_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def mint(api_key: str, *, now: float | None = None) -> str:
    """A cookie value good for :data:`LIFETIME_SECONDS`: ``<expiry>.<hmac>``."""
    expires = int((time.time() if now is None else now) + LIFETIME_SECONDS)
    return f"{expires}.{_signature(api_key, expires)}"


def valid(api_key: str, value: str, *, now: float | None = None) -> bool:
    """The value was minted with this key and has not expired."""
    expires, _, signature = value.partition(".")
    if not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    # anything but 64 hex digits is refused before the comparison (which, on str, raises on
    # non-ASCII: a crafted cookie must be a 401, not a 500)
    if _SIGNATURE.fullmatch(signature) is None:
        return False
    return hmac.compare_digest(signature.encode(), _signature(api_key, int(expires)).encode())


def from_header(cookie_header: bytes) -> str | None:
    """The ``culm_session`` value of a ``Cookie`` header, if there is one."""
    cookies: SimpleCookie = SimpleCookie()
    try:
        cookies.load(cookie_header.decode("latin-1"))
    except CookieError:
        return None
    morsel = cookies.get(COOKIE)
    return morsel.value if morsel is not None else None


def _signature(api_key: str, expires: int) -> str:
    message = f"culm-dashboard-session:{expires}".encode()
    return hmac.new(api_key.encode(), message, hashlib.sha256).hexdigest()
