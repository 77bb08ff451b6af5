"""Whatever is deleted underneath (stream, consumer, status bucket, a dev NATS's whole state), the gateway
and the workers notice, recreate it and resume within 10 s, without a restart; /readyz tells meanwhile."""

from __future__ import annotations

import shutil
import time

import aiohttp
import pytest

from jetqueue import contract
from tests.helpers import connect, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually

RECOVERY = 10.0


async def submit_until_accepted(http: aiohttp.ClientSession, url: str, call_id: str, within: float) -> float:
    """Seconds until the gateway answers 202 (503s meanwhile are fine: nothing was stored)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within:
        async with http.post(url, data=b"x", headers={"X-Call-Id": call_id}) as r:
            if r.status == 202:
                return time.monotonic() - t0
            assert r.status == 503, await r.text()
        await __import__("asyncio").sleep(0.1)
    raise AssertionError(f"{call_id}: no 202 within {within}s")


async def check_round_trip(gw, functions, http, call_id: str) -> None:
    url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
    await submit_until_accepted(http, url, call_id, RECOVERY)
    await eventually(lambda: call_id in functions.completed["echo"], timeout=RECOVERY)
    state = ""
    for _ in range(100):  # the worker writes a record off the call's slot, a moment after the call ends
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/async-calls/{call_id}") as r:
            state = (await r.json()).get("state", "") if r.status == 200 else str(r.status)
        if state == "succeeded":
            break
        await __import__("asyncio").sleep(0.05)
    assert state == "succeeded"


@pytest.mark.parametrize("what", ["stream", "consumer", "status-bucket", "everything"])
async def test_recovers_from_what_is_deleted_underneath(nats_server, functions, what):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with (
        aiohttp.ClientSession() as http,
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        await check_round_trip(gw, functions, http, "before")
        if what in ("stream", "everything"):
            await js.delete_stream(contract.stream_name(contract.DEFAULT_QUEUE))  # `jetqueue reset`
        if what == "consumer":
            await js.delete_consumer(
                contract.stream_name(contract.DEFAULT_QUEUE), contract.durable_name(contract.DEFAULT_QUEUE)
            )
        if what in ("status-bucket", "everything"):
            await js.delete_key_value(contract.status_bucket_name(contract.DEFAULT_QUEUE))
        if what == "everything":
            await js.delete_stream(contract.dlq_stream_name(contract.DEFAULT_QUEUE))
        await check_round_trip(gw, functions, http, "after")
    await nc.close()


async def test_recovers_when_a_dev_nats_restarts_empty(nats_server, functions):
    """A dev NATS (memory store) that restarts has lost every stream, consumer and bucket."""
    async with (
        aiohttp.ClientSession() as http,
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        await check_round_trip(gw, functions, http, "before")
        nats_server.stop()
        shutil.rmtree(nats_server.store / nats_server.name)
        nats_server.start()
        await check_round_trip(gw, functions, http, "after")
