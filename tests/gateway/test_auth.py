"""auth.py: bearer and basic auth on the API; probes stay public."""

from __future__ import annotations

import base64

from tests.helpers import gateway_settings, post, running_gateway


async def test_auth_bearer_and_basic(nats_server, http):
    s = gateway_settings(nats_server.url, auth_token="s3cret", auth_user="ops", auth_password="pw")
    async with running_gateway(s) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        r = await post(http, url)
        assert r.status == 401 and "Bearer" in r.headers["WWW-Authenticate"]
        assert (await post(http, url, Authorization="Bearer wrong")).status == 401
        assert (await post(http, url, Authorization="Bearer s3cret")).status == 202
        basic = base64.b64encode(b"ops:pw").decode()
        assert (await post(http, url, Authorization=f"Basic {basic}")).status == 202
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/healthz") as h:
            assert h.status == 200  # probes stay open
        assert "s3cret" not in repr(gw.s) and "pw'" not in repr(gw.s)


async def test_non_ascii_credentials_get_401_not_500(nats_server, http):
    s = gateway_settings(nats_server.url, auth_token="s3cret", auth_user="ops", auth_password="pw")
    async with running_gateway(s) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        basic = base64.b64encode("öps:pä".encode()).decode()
        for value in ("Bearer s3crét".encode().decode("latin-1"), f"Basic {basic}", "Basic ////", "Bearer"):
            assert (await post(http, url, Authorization=value)).status == 401, value
