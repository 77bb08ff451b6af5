"""server.py: the gateway process's lifecycle: readiness first, then drain, on SIGTERM."""

from __future__ import annotations

import aiohttp

from tests.helpers import gateway_settings, running_gateway


async def test_sigterm_makes_the_gateway_unready_before_it_stops_listening(nats_server):
    async with aiohttp.ClientSession() as http, running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 200
        gw.request_stop()  # what SIGTERM does
        async with http.get(f"{base}/readyz") as r:
            assert r.status == 503 and "shutting down" in await r.text()
        async with http.post(f"{base}/async-function/echo", data=b"x") as r:
            assert r.status == 202  # still serving until the listener closes
    assert gw.runner is not None and gw.runner._shutdown_timeout == gw.s.shutdown_timeout
