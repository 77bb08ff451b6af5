"""records.py: a call's submission record travels with the next call, else after HOLD, and none is left behind on
shutdown."""

from __future__ import annotations

import asyncio

from jetqueue.gateway import records
from tests.helpers import gateway_settings, post, running_gateway


async def _submitted(gw, call_id, wait=0.0):
    """The submission record stored for `call_id` (read from the bucket, not from the gateway's memory), waiting
    up to `wait` seconds for it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        entry = await gw.backend.queue_status("faas-request").store(call_id).get(call_id)
        if entry is not None or loop.time() >= deadline:
            return entry.record if entry is not None else None
        await asyncio.sleep(0.05)


async def test_a_record_goes_out_with_the_next_call_and_the_last_on_shutdown(nats_server, http, monkeypatch):
    monkeypatch.setattr(records, "HOLD", 3600.0)  # no call follows: only shutdown sends it
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        assert (await post(http, url, b"", **{"X-Call-Id": "first"})).status == 202
        assert (await post(http, url, b"", **{"X-Call-Id": "second"})).status == 202
        first = await _submitted(gw, "first", wait=30)  # sent with the second call
        assert first is not None and first["state"] == "queued"
        assert await _submitted(gw, "second") is None  # held: no call followed it
        stopped = gw
    async with running_gateway(gateway_settings(nats_server.url)) as again:
        assert stopped.accept.records.held is False
        record = await _submitted(again, "second")  # sent on shutdown, before the connection drained
        assert record is not None and record["state"] == "queued"


async def test_a_record_no_call_follows_goes_out_after_hold(nats_server, http):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        assert (await post(http, url, b"", **{"X-Call-Id": "alone"})).status == 202
        alone = await _submitted(gw, "alone", wait=30)
        assert alone is not None and alone["state"] == "queued"
