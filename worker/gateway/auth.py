"""Who may call the API (bearer token or basic auth, compared in constant time), and errors as JSON."""

from __future__ import annotations

import base64
import contextlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from jetqueue.settings import GatewaySettings

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def problem(status_code: int, reason: str, **headers: str) -> web.Response:
    """Every error the gateway gives: a status and a JSON body that says why."""
    return web.json_response({"error": reason}, status=status_code, headers=headers)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def authorized(s: GatewaySettings, header: str) -> bool:
    """Does this `Authorization` header carry the credential the gateway requires (the API, and the dashboard's
    login form: dashboard/guard.py)?"""
    scheme, _, cred = header.partition(" ")
    # Compared as bytes: compare_digest refuses non-ASCII str, and a stranger's header must not cause a 500.
    if s.auth_token and scheme.lower() == "bearer" and _same(cred.strip(), s.auth_token):
        return True
    if s.auth_user and scheme.lower() == "basic":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            user, _, password = base64.b64decode(cred.strip(), validate=True).decode().partition(":")
            if _same(user, s.auth_user) & _same(password, s.auth_password):
                return True
    return False


def refused(s: GatewaySettings, request: web.BaseRequest) -> web.Response | None:
    """The 401 for a request without the credential the gateway requires, or None (the middleware below, and
    the front door for the submissions it takes: front.py)."""
    if authorized(s, request.headers.get("Authorization", "")):
        return None
    challenge = 'Bearer realm="jetqueue"' if s.auth_token else 'Basic realm="jetqueue"'
    return problem(401, "authentication required", **{"WWW-Authenticate": challenge})


def auth_middleware(s: GatewaySettings, own_auth: str = "") -> Middleware:
    """`own_auth`: a path prefix whose pages check the same credentials themselves (the dashboard's, which also
    takes them through a login form and a session cookie: dashboard/guard.py)."""

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        mine = own_auth and (request.path == own_auth or request.path.startswith(own_auth + "/"))
        if request.path in PUBLIC or mine or not (s.auth_token or s.auth_user):
            return await handler(request)
        no = refused(s, request)
        return await handler(request) if no is None else no

    return auth


def too_large(max_body_size: int) -> web.Response:
    return problem(413, f"body larger than {max_body_size} bytes")


def errors_middleware(max_body_size: int) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return too_large(max_body_size)
        except web.HTTPException as e:
            if e.status >= 400 and e.content_type != "application/json":
                return problem(e.status, e.reason, **{k: v for k, v in e.headers.items() if k == "Allow"})
            raise

    return errors
