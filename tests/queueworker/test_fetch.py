"""fetch.py: fetching only into free slots."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from jetqueue.queueworker.fetch import ConsumerLoop, Slots
from jetqueue.queueworker.heartbeat import AckExtender
from jetqueue.queueworker.pullrequests import ConsumerPull
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


class Acker:
    """A processor that acks at once."""

    def __init__(self) -> None:
        self.extender = AckExtender(30)
        self.handled = 0

    async def handle(self, msg: Msg) -> None:
        self.handled += 1
        await msg.ack()


async def test_pulls_do_not_pile_up_while_the_consumer_is_at_max_ack_pending(nats_server):
    """A pull the server cannot answer (another worker holds every slot of max_ack_pending) expires there: the
    loop's pulls, one a second, never fill the consumer's waiting list (then every worker's pulls would be refused
    with 409 Exceeded MaxWaiting)."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="S", subjects=["s.>"]))
    config = ConsumerConfig(durable_name="C", ack_policy=AckPolicy.EXPLICIT, max_ack_pending=4, max_waiting=8)
    await js.add_consumer("S", config)
    await asyncio.gather(*(js.publish("s.a", b"%d" % i) for i in range(50)))
    other = await js.pull_subscribe_bind(durable="C", stream="S")
    held = await other.fetch(4, timeout=5)  # a busy worker holds every slot
    loop: ConsumerLoop | None = None
    pull = await ConsumerPull(js, "S", "C", orphan=lambda m: loop.adopt(m) if loop else None).start()
    loop = ConsumerLoop("C", pull, Slots(3), Acker())
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(8)
    info = await js.consumer_info("S", "C")
    assert info.num_waiting <= 2, info.num_waiting
    for m in held:
        await m.ack()
    await eventually(lambda: loop is not None and loop.processor.handled == 46, timeout=30)  # type: ignore[attr-defined]
    loop.stopping = True
    await task
    await pull.unsubscribe()
    await other.unsubscribe()
    await nc.close()


async def test_a_message_delivered_while_stopping_is_handed_back_at_once(nats_server):
    """Delivered to a pull that gave up, after the loop stopped: NAKed at once, not left until ack_wait."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, "http://127.0.0.1:9/{function}", ack_wait=60.0)
    async with running_worker(settings) as w:
        loop = w.loops[0]
        loop.stopping = True
        await asyncio.wait_for(w._loop_tasks[0], 10)  # the worker's own loop takes nothing from here on
        await enqueue(nc, "echo")
        psub = await js.pull_subscribe_bind(durable=w.s.durable, stream=w.s.stream)
        (msg,) = await psub.fetch(1, timeout=5)
        loop.adopt(msg)
        (again,) = await psub.fetch(1, timeout=5)  # long before ack_wait
        assert again.metadata.num_delivered == 2
        await again.ack()
        await psub.unsubscribe()
    await nc.close()
