"""front.py: the front door takes a submission only where the router would send it to the same handler, with the
same function name; everything else is left to the router."""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from jetqueue.gateway.front import SUBMIT_METHODS, submission_name
from jetqueue.gateway.server import Gateway
from jetqueue.settings import GatewaySettings
from tests.helpers import gateway_settings, running_gateway

APP = Gateway(GatewaySettings()).app()
PARTS = ["a", "echo", "f-1", "x.ns", "Echo", ".", "..", "%2e", "%2F", "%41", "/", "//", "?", "?q=1", "#", "~", "-", ""]
part = st.one_of(st.sampled_from(PARTS), st.text(max_size=6).map(lambda s: urllib.parse.quote(s, safe="/?=&")))
tail = st.lists(part, max_size=6).map("".join)


def routed_name(method: str, target: str) -> str | None:
    """The name the router hands to the submission handler for this request, or None (another handler)."""

    async def resolve() -> str | None:
        match = await APP.router.resolve(make_mocked_request(method, target, app=APP))
        if match.http_exception is not None or getattr(match.handler, "__name__", "") != "submit":
            return None
        return match["name"]

    return asyncio.run(resolve())


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from([*SUBMIT_METHODS, "DELETE", "HEAD"]), target=tail.map(lambda t: "/async-function/" + t))
def test_the_front_takes_only_what_the_router_gives_the_submission_handler(method, target):
    name = submission_name(target) if method in SUBMIT_METHODS else None
    if name is not None:
        assert routed_name(method, target) == name, (method, target)


@pytest.mark.parametrize(
    "target",
    ["/async-function/echo", "/async-function/echo/a/b?x=1", "/async-function/echo.ns?q", "/async-function/e/"],
)
def test_plain_submissions_are_taken(target):
    assert submission_name(target) is not None


@pytest.mark.parametrize(
    "target",
    [
        "/async-function/",
        "/async-function/%65cho",  # decoded by the router: its answer (400) is the documented one
        "/async-function/echo/%2e%2e/x",
        "/async-function/echo/../x",
        "/async-function/Echo",
        "/async-functions/echo",
        "/async-calls/x",
        "http://host/async-function/echo",
    ],
)
def test_anything_else_is_left_to_the_router(target):
    assert submission_name(target) is None


async def test_the_gateway_serves_through_the_front_door(nats_server):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        assert gw.runner is not None and gw.runner.server is not None
        assert gw.runner.server.request_handler.__qualname__ == "front.<locals>.handle"
