"""Sign-in, sessions and forged requests (dashboard/guard.py), against the dashboard's own app, and the gateway's
middleware leaving only the dashboard's prefix to it. No NATS: an action that gets past the guard answers 303
with the operation's error as its message, one refused by the guard 401 or 403."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from jetqueue.dashboard.app import Dashboard
from jetqueue.dashboard.command import standalone_app
from jetqueue.dashboard.guard import COOKIE
from jetqueue.settings import GatewaySettings

TOKEN = "guard-test-token-0123456789"


def settings(**kw: str) -> GatewaySettings:
    return GatewaySettings(**{"auth_token": TOKEN, **kw})  # type: ignore[arg-type]


async def serve(app: web.Application) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def site() -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    server = await serve(standalone_app(Dashboard(settings(), lambda: None)))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        yield str(server.make_url("")), http
    await server.close()


async def csrf_of(http: aiohttp.ClientSession, url: str, **headers: str) -> str:
    async with http.get(url, headers=headers, allow_redirects=False) as r:
        assert r.status == 200, await r.text()
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', await r.text())
        assert found
        return found.group(1)


async def sign_in(base: str, http: aiohttp.ClientSession) -> str:
    token = await csrf_of(http, base + "/dashboard/login")
    form = {"csrf": token, "token": TOKEN}
    async with http.post(base + "/dashboard/login", data=form, headers={"Origin": base}, allow_redirects=False) as r:
        assert r.status == 303
    return await csrf_of(http, base + "/dashboard/calls")


async def test_pages_need_the_api_credentials(site: tuple[str, aiohttp.ClientSession]) -> None:
    base, http = site
    async with http.get(base + "/dashboard/calls", allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/dashboard/login"
    async with http.get(base + "/dashboard/live") as r:
        assert r.status == 401
    async with http.get(
        base + "/dashboard/calls", headers={"Authorization": "Bearer wrong"}, allow_redirects=False
    ) as r:
        assert r.status == 303
    async with http.get(base + "/dashboard/calls", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
        for header in ("Content-Security-Policy", "X-Frame-Options", "Cache-Control"):
            assert header in r.headers
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]


async def test_sign_in_checks_the_token_and_starts_a_new_session(site: tuple[str, aiohttp.ClientSession]) -> None:
    base, http = site
    token = await csrf_of(http, base + "/dashboard/login")
    visitor = http.cookie_jar.filter_cookies(URL(base + "/dashboard/"))[COOKIE].value
    form = {"csrf": token, "token": "wrong"}
    async with http.post(base + "/dashboard/login", data=form, headers={"Origin": base}) as r:
        assert r.status == 401 and "wrong credentials" in await r.text()
    # A visitor's session may post the sign-in form only: acting needs a signed-in one.
    act = {"csrf": token}
    async with http.post(base + "/dashboard/queues/q/pause", data=act, headers={"Origin": base}) as r:
        assert r.status == 401
    await sign_in(base, http)
    signed = http.cookie_jar.filter_cookies(URL(base + "/dashboard/"))[COOKIE].value
    assert signed.split(".")[0] != visitor.split(".")[0]  # a new nonce: no session fixation
    async with http.get(base + "/dashboard/calls") as r:
        assert r.status == 200 and "Sign out" in await r.text()


async def test_a_post_needs_the_session_token_and_the_own_origin(site: tuple[str, aiohttp.ClientSession]) -> None:
    base, http = site
    token = await sign_in(base, http)
    url = base + "/dashboard/queues/q/pause"
    refused = [
        ({"csrf": "0" * 64}, {"Origin": base}, "token"),
        ({}, {"Origin": base}, "token"),
        ({"csrf": token}, {"Origin": "https://evil.example"}, "another origin"),
        ({"csrf": token}, {"Origin": "null"}, "no origin"),
        ({"csrf": token}, {}, "no origin"),
        ({"csrf": token}, {"Referer": "http://evil.example/page"}, "another origin"),
    ]
    for form, headers, why in refused:
        async with http.post(url, data=form, headers=headers, allow_redirects=False) as r:
            assert r.status == 403 and why in await r.text(), (form, headers)
    for headers in ({"Origin": base}, {"Referer": base + "/dashboard/"}):
        async with http.post(url, data={"csrf": token}, headers=headers, allow_redirects=False) as r:
            assert r.status == 303  # past the guard; the operation itself fails (no NATS) and says so
        async with http.get(base + "/dashboard/calls") as r:
            assert "not connected to NATS" in await r.text()


async def test_basic_auth_sent_by_the_browser_is_not_enough_to_act() -> None:
    """Basic credentials ride along on a forged cross-site form too: without the page's token it is refused."""
    s = GatewaySettings(auth_user="ops", auth_password="pw-0123456789")
    server = await serve(standalone_app(Dashboard(s, lambda: None)))
    base = str(server.make_url(""))
    try:
        basic = {"Authorization": aiohttp.encode_basic_auth("ops", "pw-0123456789")}
        async with aiohttp.ClientSession(headers=basic) as http:
            url = base + "/dashboard/queues/q/pause"
            async with http.post(url, data={}, headers={"Origin": base}, allow_redirects=False) as r:
                assert r.status == 403
            async with http.get(base + "/dashboard/calls") as r:
                assert r.status == 200
    finally:
        await server.close()


async def test_a_tampered_cookie_is_refused_and_replicas_share_sessions(
    site: tuple[str, aiohttp.ClientSession],
) -> None:
    base, http = site
    await sign_in(base, http)
    cookie = http.cookie_jar.filter_cookies(URL(base + "/dashboard/"))[COOKIE].value
    nonce, expires, flag, mac = cookie.split(".")
    replica = Dashboard(settings(), lambda: None)  # another replica, same token
    other = await serve(standalone_app(replica))
    past = f"{nonce}.{int(time.time()) - 1}.1"
    expired = f"{past}.{replica.guard._mac(past)}"  # signed right, but over
    rotated = await serve(standalone_app(Dashboard(settings(auth_token=TOKEN + "-new"), lambda: None)))
    try:
        async with aiohttp.ClientSession() as fresh:
            for server, value, ok in (
                (other, cookie, True),
                (rotated, cookie, False),  # the credentials changed: every session ends
                (other, f"{nonce}.{int(expires) + 9999}.{flag}.{mac}", False),
                (other, f"{nonce}.{expires}.{flag}.{'0' * 64}", False),
                (other, expired, False),
            ):
                headers = {"Cookie": f"{COOKIE}={value}"}
                async with fresh.get(server.make_url("/dashboard/calls"), headers=headers, allow_redirects=False) as r:
                    assert (r.status == 200) is ok, value
    finally:
        await other.close()
        await rotated.close()


async def test_the_gateway_leaves_only_the_dashboard_prefix_to_it(nats_server) -> None:
    from tests.helpers import gateway_settings, running_gateway

    async with (
        running_gateway(gateway_settings(nats_server.url, auth_token=TOKEN, dashboard=True)) as gw,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with http.get(base + "/dashboard/login") as r:
            assert r.status == 200 and 'name="token"' in await r.text()
        async with http.get(base + "/dashboard/", allow_redirects=False) as r:
            assert r.status == 303
        for path in ("/dashboardx", "/async-calls/abc"):
            async with http.get(base + path) as r:
                assert r.status == 401, path
    async with (
        running_gateway(gateway_settings(nats_server.url, auth_token=TOKEN)) as gw,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/dashboard/login") as r:
            assert r.status == 401  # off by default: nothing there, and the API's auth answers first
    async with (  # `jetqueue dev`'s: on loopback, no credentials
        running_gateway(gateway_settings(nats_server.url, dashboard=True)) as gw,
        aiohttp.ClientSession() as http,
    ):
        url = f"http://127.0.0.1:{gw.s.http_port}/dashboard/calls"
        async with http.get(url) as r:
            assert r.status == 200
        async with http.get(url, headers={"Host": "rebound.example"}) as r:
            assert r.status == 403 and "only at localhost" in await r.text()


async def test_without_credentials_on_loopback_only_loopback_names_are_answered() -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 would be same-origin with an open local dashboard."""
    server = await serve(standalone_app(Dashboard(GatewaySettings(), lambda: None, local_only=True)))
    try:
        async with aiohttp.ClientSession() as http:
            url = server.make_url("/dashboard/calls")
            for host, answered in (
                ("127.0.0.1:1234", True),
                ("localhost", True),
                ("[::1]:80", True),
                ("evil.example", False),
            ):
                async with http.get(url, headers={"Host": host}, allow_redirects=False) as r:
                    assert (r.status == 200) is answered, host
    finally:
        await server.close()
