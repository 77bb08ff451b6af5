"""heartbeat.py: a call longer than ack_wait is extended, never redelivered while it runs."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


@pytest.mark.slow
async def test_long_job_runs_exactly_once(nats_server, functions):
    async def twenty_seconds(request, server):
        await asyncio.sleep(20)
        return web.Response(text="finally")

    functions.handlers["long"] = twenty_seconds
    nc = await connect(nats_server.url)
    async with running_worker(
        worker_settings(nats_server.url, functions.url_template, ack_wait=3.0, upstream_timeout=60.0)
    ):
        await enqueue(nc, "long")
        await eventually(lambda: len(functions.completed["long"]) == 1, timeout=60)
        await asyncio.sleep(4)  # past another ack_wait: a redelivery would show now
    assert len(functions.calls["long"]) == 1
    await nc.close()
