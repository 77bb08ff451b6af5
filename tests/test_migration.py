"""The switch from OpenFaaS of docs/migrating-from-openfaas.md, run against a real nats-server: jetqueue refuses a
stream another queue-worker takes; the drain check the page gives holds back until every call of OpenFaaS's
worker is done; after the steps, jetqueue's gateway and worker run the queue; under another queue name both run
side by side. OpenFaaS's worker is a stand-in: a pull consumer on its stream that acks, or retries once after a
delay (a NAK with a delay, as OpenFaaS's worker retries)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
import pytest
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from jetqueue.provision import StreamSetupError
from jetqueue.queueworker.metrics import WorkerMetrics
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually

STREAM, CONSUMER = "OF_faas-request", "faas-workers"  # OpenFaaS's shared queue, its consumer's older name


async def openfaas_queue(js: JetStreamContext, calls: int) -> None:
    await js.add_stream(StreamConfig(name=STREAM, subjects=["faas-request.>"], retention=RetentionPolicy.WORK_QUEUE))
    await js.add_consumer(STREAM, ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT))
    for i in range(calls):
        await js.publish(f"faas-request.fn-{i % 3}", f'{{"call": {i}}}'.encode())


class StandIn:
    """OpenFaaS's queue-worker on its stream: each call done once; some retried first, after 3 s."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.done: set[bytes] = set()
        self.retried: set[bytes] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        sub = await self.js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
        while True:
            try:
                msgs = await sub.fetch(5, timeout=0.5)
            except (NatsTimeout, TimeoutError):  # nothing came (nats-py raises either)
                continue
            for msg in msgs:
                if msg.data.endswith((b"0}", b"3}", b"6}", b"9}")) and msg.data not in self.retried:
                    self.retried.add(msg.data)
                    await msg.nak(delay=3.0)
                else:
                    self.done.add(msg.data)
                    await msg.ack()

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task


async def until(check: Callable[[], bool], state: Callable[[], object]) -> None:
    """eventually(), saying what was seen when it times out."""
    try:
        await eventually(check)
    except AssertionError:
        raise AssertionError(f"not reached; {state()}") from None


async def drained(js: JetStreamContext) -> bool:
    """The page's check: the consumer has nothing pending and nothing unacknowledged (a retry waiting counts)."""
    info = await js.consumer_info(STREAM, CONSUMER)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_jetqueue_refuses_a_stream_another_queue_worker_takes(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await openfaas_queue(js, 3)
    worker = Worker(worker_settings(nats_server.url, functions.url_template), WorkerMetrics())
    try:
        with pytest.raises(StreamSetupError) as refused:
            await worker.start()
    finally:
        await worker.stop()
    message = str(refused.value)
    assert f"{STREAM} has {CONSUMER}" in message and "docs/migrating-from-openfaas.md" in message
    assert "drain it and remove its consumer first, or give the jetqueue queue another name" in message
    assert (await js.stream_info(STREAM)).state.messages == 3  # OpenFaaS's calls untouched
    assert functions.calls == {}
    await nc.close()


async def test_the_documented_drain_then_switch_loses_no_call(nats_server, functions, callbacks):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await openfaas_queue(js, 12)
    openfaas_worker = StandIn(js)
    openfaas_worker.start()
    try:
        # Submissions stopped (no more publishes); OpenFaaS's worker finishes what it holds. The check says
        # "drained" only when every call is done: not while a retry waits for its time.
        await until(lambda: len(openfaas_worker.retried) >= 4, lambda: vars(openfaas_worker))
        assert not await drained(js)
        for _ in range(600):
            if await drained(js) and await drained(js):  # both 0, twice in a row
                break
            await asyncio.sleep(0.05)
        assert len(openfaas_worker.done) == 12  # nothing left behind when the check passed
    finally:
        await openfaas_worker.stop()
    await js.delete_consumer(STREAM, CONSUMER)  # nats consumer rm OF_faas-request faas-workers
    await js.delete_stream(STREAM)  # nats stream rm OF_faas-request
    # jetqueue's worker and gateway for the queue, and the submissions sent to jetqueue's gateway.
    gs = gateway_settings(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)), running_gateway(gs) as gw:
        async with aiohttp.ClientSession() as http:
            for i in range(5):
                async with http.post(
                    f"http://127.0.0.1:{gw.s.http_port}/async-function/fn-{i}",
                    data=b"after the switch",
                    headers={"X-Callback-Url": callbacks.url},
                ) as r:
                    assert r.status == 202
        await until(lambda: len(callbacks.received) == 5, lambda: (callbacks.received, dict(functions.calls)))
    assert all(h["X-Function-Status"] == "200" for h, _ in callbacks.received)
    await nc.close()


async def test_under_another_queue_name_both_run_side_by_side(nats_server, functions, callbacks):
    """The shared-NATS alternative: jetqueue's queue `jq-faas-request` beside OpenFaaS's `faas-request`."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await openfaas_queue(js, 6)
    openfaas_worker = StandIn(js)
    openfaas_worker.start()
    queue = "jq-faas-request"
    try:
        ws = worker_settings(nats_server.url, functions.url_template, queue=queue)
        gs = gateway_settings(nats_server.url, default_queue=queue)
        async with running_worker(ws), running_gateway(gs) as gw, aiohttp.ClientSession() as http:
            for i in range(5):
                async with http.post(
                    f"http://127.0.0.1:{gw.s.http_port}/async-function/fn-{i}",
                    headers={"X-Callback-Url": callbacks.url},
                ) as r:
                    assert r.status == 202 and r.headers["X-Queue"] == queue
            await until(
                lambda: len(callbacks.received) == 5 and len(openfaas_worker.done) == 6,
                lambda: (len(callbacks.received), vars(openfaas_worker), dict(functions.calls)),
            )
    finally:
        await openfaas_worker.stop()
    assert sum(len(c) for c in functions.calls.values()) == 5  # jetqueue ran its own calls, none of OpenFaaS's
    assert await drained(js)
    await nc.close()
