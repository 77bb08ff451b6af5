"""callbacks.py: callbacks retried until the receiver is back."""

from __future__ import annotations

import asyncio

from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


async def test_callback_receiver_down_then_back(nats_server, functions, callbacks):
    callbacks.status = 503
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        assert w.callbacks is not None
        w.callbacks.first_wait = 0.3
        await enqueue(nc, "echo", callback_url=callbacks.url)
        await asyncio.sleep(0.2)
        callbacks.status = 200
        await eventually(lambda: len(callbacks.received) == 1)
    await nc.close()
