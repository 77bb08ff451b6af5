"""The worker's baseline, run as its own process as the worker is: nats-py fetch + aiohttp POST + ack.

`python bench/bare_loop.py NATS_URL STREAM FUNCTION_URL_TEMPLATE [MAX_INFLIGHT]`. One durable pull consumer
(`bare`, ack explicit, max_ack_pending 2 × max_inflight as the worker's default), fetching as many messages as
there are free slots (at most 256), each POSTed to the function named by its subject's last token and acked
on any answer. Only `X-Start-Time` is forwarded (the latency figure reads it). No retries, no status, no
metrics, no heartbeats: nothing the worker adds. SIGTERM: stop fetching, finish what is in flight, exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import aiohttp
import nats
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig

DURABLE = "bare"


async def main(nats_url: str, stream: str, template: str, limit: int) -> None:
    nc = await nats.connect(nats_url.split(","))
    js = nc.jetstream()
    await js.add_consumer(
        stream, ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT, max_ack_pending=2 * limit)
    )
    psub = await js.pull_subscribe_bind(durable=DURABLE, stream=stream)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    inflight = 0
    room = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as http:

        async def one(m: nats.aio.msg.Msg) -> None:
            nonlocal inflight
            try:
                function = m.subject.rpartition(".")[2]
                start = (m.headers or {}).get("X-Start-Time")
                headers = {"X-Start-Time": start} if start else None
                async with http.post(template.replace("{function}", function), data=m.data, headers=headers) as r:
                    await r.read()
                await m.ack()
            except Exception as e:  # a baseline: report, never retry
                print(f"bare loop: {e!r}", file=sys.stderr)
            finally:
                inflight -= 1
                room.set()

        print("ready", flush=True)
        while not stop.is_set():
            free = limit - inflight
            if free <= 0:
                room.clear()
                await room.wait()
                continue
            try:
                msgs = await psub.fetch(min(free, 256), timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            for m in msgs:
                inflight += 1
                t = asyncio.create_task(one(m))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await psub.unsubscribe()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 50))
