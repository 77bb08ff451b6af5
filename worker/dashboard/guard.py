"""Who may see the dashboard and change anything through it: the API's credentials, a signed session cookie, and
checks on every POST against cross-site request forgery.

- Authentication is the gateway API's (`gateway/auth.refused`: the same bearer token or basic-auth user, compared
  in constant time). A browser cannot send a bearer token by itself, so the login page takes the token (or the user
  and password) once and answers with a session cookie; `Authorization` headers work as on the API.
- The session cookie is `<nonce>.<expiry>.<flag>.<mac>`, HMAC-SHA256 under a key derived from the credentials, so
  every gateway replica accepts every other's sessions and changing the credentials ends them all. Without
  credentials configured (a local `jetqueue dashboard`) the key is random per process. HttpOnly, SameSite=Strict,
  Secure over HTTPS, Path = the dashboard's prefix.
- Every POST must carry the session's CSRF token (an HMAC of its nonce, in a hidden form field) and come from the
  page's own origin (Origin, else Referer, must name the Host the request came to): a form posted from another
  site fails both, even when the browser sends basic-auth credentials along by itself.
- Every answer forbids framing, inline scripts, caching and referrers (`HEADERS`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from jetqueue.gateway.auth import authorized
from jetqueue.settings import GatewaySettings

COOKIE = "jetqueue-dashboard"
FLASH = "jetqueue-dashboard-flash"
SESSION_TTL = 12 * 3600.0
CSRF_FIELD = "csrf"
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class Session:
    nonce: str
    expires: int
    signed_in: bool  # False: a visitor on the login page, with a CSRF token for its form only


class Guard:
    def __init__(self, settings: GatewaySettings, prefix: str, local_only: bool = False) -> None:
        self.s = settings
        self.prefix = prefix
        self.local_only = local_only
        self.required = bool(settings.auth_token or settings.auth_user)
        if self.required:
            material = "\0".join((settings.auth_token, settings.auth_user, settings.auth_password)).encode()
            self.key = hmac.new(material, b"jetqueue-dashboard-session", hashlib.sha256).digest()
        else:
            self.key = os.urandom(32)

    def wrong_host(self, request: web.Request) -> str | None:
        """Without credentials on loopback (`local_only`), a request must name a loopback host: a page of another
        site whose name an attacker pointed at 127.0.0.1 (DNS rebinding) would be same-origin with the dashboard
        and could read its CSRF token."""
        if not self.local_only:
            return None
        host = urlsplit("//" + request.headers.get("Host", "")).hostname or ""
        if host in LOOPBACK:
            return None
        return f"without credentials this dashboard answers only at localhost, not {host!r}"

    def _mac(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def csrf(self, session: Session) -> str:
        return self._mac("csrf." + session.nonce)

    def session(self, request: web.Request) -> Session | None:
        """The request's valid session, if it carries one."""
        nonce, _, rest = request.cookies.get(COOKIE, "").partition(".")
        expires, _, rest = rest.partition(".")
        flag, _, mac = rest.partition(".")
        if not (nonce and expires.isdigit() and flag in ("0", "1")):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{nonce}.{expires}.{flag}")) or int(expires) < time.time():
            return None
        return Session(nonce, int(expires), flag == "1")

    def signed_in(self, request: web.Request) -> bool:
        """May this request see the dashboard: no credentials are required, it sends them as the API takes them,
        or it has a signed-in session."""
        if not self.required or authorized(self.s, request.headers.get("Authorization", "")):
            return True
        session = self.session(request)
        return session is not None and session.signed_in

    def check_credentials(self, token: str, user: str, password: str) -> bool:
        """The login form's fields, checked exactly as the API checks its Authorization header."""
        if token and authorized(self.s, f"Bearer {token}"):
            return True
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        return bool(user) and authorized(self.s, f"Basic {basic}")

    def issue(self, response: web.StreamResponse, request: web.Request, signed_in: bool) -> Session:
        """A new session (a new nonce: a visitor's session never becomes a signed-in one) set as the cookie."""
        session = Session(secrets.token_urlsafe(18), int(time.time() + SESSION_TTL), signed_in)
        flag = "1" if signed_in else "0"
        value = f"{session.nonce}.{session.expires}.{flag}"
        self._set(response, request, COOKIE, f"{value}.{self._mac(value)}", int(SESSION_TTL))
        return session

    def _set(self, response: web.StreamResponse, request: web.Request, name: str, value: str, max_age: int) -> None:
        https = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        path = self.prefix + "/"
        response.set_cookie(name, value, path=path, httponly=True, samesite="Strict", secure=https, max_age=max_age)

    def end(self, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path=self.prefix + "/")

    def forged(self, request: web.Request, form: dict[str, str]) -> str | None:
        """Why a POST is refused as possibly forged (another site's form), or None."""
        source = request.headers.get("Origin") or request.headers.get("Referer") or ""
        if not source or source == "null":
            return "the request names no origin (Origin or Referer): refused"
        origin = urlsplit(source).netloc
        hosts = {request.headers.get("Host", ""), request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()}
        if origin not in hosts - {""}:
            return f"the request comes from another origin ({urlsplit(source).scheme}://{origin}): refused"
        session = self.session(request)
        if session is None or not hmac.compare_digest(form.get(CSRF_FIELD, ""), self.csrf(session)):
            return "the form's token does not match this session (expired, or sent from elsewhere): reload the page"
        return None

    # A flash message: the outcome of an action, shown once on the page it redirects to (post/redirect/get).
    def flash(self, response: web.StreamResponse, request: web.Request, text: str, ok: bool) -> None:
        value = ("1" if ok else "0") + base64.urlsafe_b64encode(text[:1500].encode()).decode()
        self._set(response, request, FLASH, f"{value}.{self._mac('flash.' + value)}", 60)

    def take_flash(self, request: web.Request, response: web.StreamResponse) -> tuple[str, bool] | None:
        value, _, mac = request.cookies.get(FLASH, "").partition(".")
        if not value:
            return None
        response.del_cookie(FLASH, path=self.prefix + "/")
        if not hmac.compare_digest(mac, self._mac("flash." + value)):
            return None
        return base64.urlsafe_b64decode(value[1:]).decode(errors="replace"), value[0] == "1"
