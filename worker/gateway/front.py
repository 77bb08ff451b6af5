"""The gateway's front door: the first code every request meets, in front of aiohttp's router.

A submission (`POST`/`PUT`/`PATCH`/`GET /async-function/<name>[/<path>][?<query>]`) whose request target is plain
goes straight to `Accept.submit_as`, with the checks the application's middlewares make (auth.py) made here
inline. Everything else, and every submission whose target holds anything the router would decode or normalise
(`%`, `#`, a dot segment), an invalid function name, or an `Expect` header (aiohttp's 100-continue handling), goes
through the aiohttp application unchanged: routes, middlewares, JSON 404/405. Both end in the same `Accept`
code, so the answers are the same; only the way there is shorter.

Why: the router's lookup and the two middleware layers (ours and aiohttp's `_fix_request_current_app`) around
every handler were about a tenth of the gateway's CPU per submission under wrk (bench/results.md), for routing
that a prefix test decides.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from jetqueue import contract
from jetqueue.gateway.accept import MAX_FUNCTION_NAME, PREFIX, Accept
from jetqueue.gateway.auth import refused, too_large
from jetqueue.settings import GatewaySettings

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
SUBMIT_METHODS = ("POST", "PUT", "PATCH", "GET")  # the methods of the submission routes (server.py)
_NAME = re.compile(re.escape(PREFIX) + r"([^/?]+)")  # the segment the routes call {name}


def submission_name(target: str) -> str | None:
    """The function name of a submission the front may take (the router would pick a submission route with
    exactly this name), or None: the router decides. `%`, `#` and dot segments are the router's: it decodes and
    normalises them, and its answer is the one the API documents."""
    if "%" in target or "#" in target or "/." in target or (m := _NAME.match(target)) is None:
        return None
    name = m.group(1)
    return name if len(name) <= MAX_FUNCTION_NAME and contract.FUNCTION_NAME.match(name) else None


def front(s: GatewaySettings, accept: Accept, routed: Handler) -> Handler:
    """The request handler of the gateway's HTTP server: submissions it can take, else `routed` (the
    application's own handler: router and middlewares)."""
    auth = bool(s.auth_token or s.auth_user)
    max_body = s.max_body_size

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        if request.method not in SUBMIT_METHODS or (name := submission_name(target)) is None:
            return await routed(request)
        if hdrs.EXPECT in request.headers:  # aiohttp's router answers `Expect: 100-continue`
            return await routed(request)
        if auth and (no := refused(s, request)) is not None:
            return no
        path, _, query = target.partition("?")
        try:
            return await accept.submit_as(request, name, path, query)
        except web.HTTPRequestEntityTooLarge:
            return too_large(max_body)

    return handle
