"""fetch.py: fetching only into free slots."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


async def test_max_inflight_never_exceeded(nats_server, functions):
    async def slowish(request, server):
        await asyncio.sleep(0.05)
        return web.Response(text="ok")

    functions.handlers["slowish"] = slowish
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_inflight=7)):
        await asyncio.gather(*(enqueue(nc, "slowish") for _ in range(150)))
        await eventually(lambda: len(functions.completed["slowish"]) == 150)
    assert functions.max_concurrent == 7
    await nc.close()


async def test_throughput_smoke(nats_server, functions):
    """Not a benchmark (see `make bench`): a sanity check that 1,000 calls flow without loss."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_inflight=50)):
        t0 = time.monotonic()
        acks = [
            js.publish("faas-request.echo", b"x", headers={"Nats-Msg-Id": f"c{i}", "X-Call-Id": f"c{i}"})
            for i in range(1000)
        ]
        await asyncio.gather(*acks)
        await eventually(lambda: len(functions.completed["echo"]) == 1000, timeout=120)
        print(f"1000 calls in {time.monotonic() - t0:.2f}s")
    assert sorted(functions.completed["echo"]) == sorted(f"c{i}" for i in range(1000))
    await nc.close()
