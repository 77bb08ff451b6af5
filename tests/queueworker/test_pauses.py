"""queueworker/pauses.py: a worker keeps its consumers paused as the records say, creates them paused, and
exports queue_worker_paused."""

from __future__ import annotations

import asyncio
import io

from jetqueue import contract
from jetqueue.ops import pauses as ops
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, consumer_back, enqueue, running_worker, worker_settings
from tests.servers import eventually

QUEUE = contract.DEFAULT_QUEUE
STREAM = contract.stream_name(QUEUE)


async def pause(js, function: str = "") -> None:
    assert await ops.pause(js, QUEUE, function, None, io.StringIO()) == 0


async def resume(js, function: str = "") -> None:
    assert await ops.resume(js, QUEUE, function, io.StringIO()) == 0


def paused_gauge(worker: Worker, function: str) -> float | None:
    return worker.metrics.registry.get_sample_value(
        "queue_worker_paused", {"queue_name": QUEUE, "function_name": function}
    )


async def test_function_mode_pauses_one_function_or_all(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template, mode="function")
    async with running_worker(settings) as w:
        await pause(js, "a")  # before its consumer exists: the worker creates it paused
        for i in range(3):
            await enqueue(nc, "a", call_id=f"a-{i}")
            await enqueue(nc, "b", call_id=f"b-{i}")
        await eventually(lambda: len(functions.completed["b"]) == 3)
        assert (await consumer_back(js, STREAM, contract.function_consumer_name(QUEUE, "a"))).paused
        await asyncio.sleep(1.0)
        assert functions.calls["a"] == []  # the others ran; a's calls are kept
        await eventually(lambda: paused_gauge(w, "a") == 1.0 and paused_gauge(w, "*") == 0.0)

        await pause(js)  # every function
        await enqueue(nc, "b", call_id="b-held")
        await enqueue(nc, "c", call_id="c-held")
        await asyncio.sleep(2.0)
        assert len(functions.calls["b"]) == 3 and functions.calls["c"] == []
        await eventually(lambda: paused_gauge(w, "*") == 1.0 and paused_gauge(w, "b") == 1.0)

        await resume(js)
        await eventually(lambda: len(functions.completed["a"]) == 3 and len(functions.completed["b"]) == 4, timeout=20)
        await eventually(lambda: functions.completed["c"] == ["c-held"], timeout=20)
        await eventually(lambda: paused_gauge(w, "a") == 0.0 and paused_gauge(w, "*") == 0.0)
    await nc.close()


async def test_a_pause_survives_the_consumer_going_and_a_worker_restart(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    name = contract.function_consumer_name(QUEUE, "a")
    # A short inactive_threshold: idle consumers are removed by the server within seconds.
    settings = worker_settings(nats_server.url, functions.url_template, mode="function", inactive_threshold=2.0)
    async with running_worker(settings):
        await enqueue(nc, "a", call_id="first")
        await eventually(lambda: functions.completed["a"] == ["first"])
        await pause(js, "a")
        await enqueue(nc, "a", call_id="kept")
        assert (await consumer_back(js, STREAM, name)).paused  # a paused function's calls: a consumer of its own
        await js.delete_consumer(STREAM, name)  # gone underneath: the worker makes it again, paused
        assert (await consumer_back(js, STREAM, name)).paused
        await asyncio.sleep(3.0)  # past inactive_threshold
        assert functions.calls["a"] == ["first"]
    # Another worker, with other settings: ensure_consumer updates the consumer in place and keeps its pause.
    restarted = worker_settings(
        nats_server.url, functions.url_template, mode="function", inactive_threshold=2.0, max_inflight=7
    )
    async with running_worker(restarted):
        await asyncio.sleep(2.0)
        assert functions.calls["a"] == ["first"]
        assert (await consumer_back(js, STREAM, name)).paused
        await resume(js, "a")
        await eventually(lambda: functions.completed["a"] == ["first", "kept"], timeout=20)
    await nc.close()


async def test_a_consumer_resumed_by_hand_is_paused_again(nats_server, functions, monkeypatch):
    """The records are the fact: a full comparison every RESYNC seconds sets a consumer right."""
    monkeypatch.setattr("jetqueue.pauses.RESYNC", 1.0)
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        await pause(js)
        await js.resume_consumer(STREAM, contract.durable_name(QUEUE))
        await enqueue(nc, "echo", call_id="maybe")
        for _ in range(100):
            await asyncio.sleep(0.1)
            if (await js.consumer_info(STREAM, contract.durable_name(QUEUE))).paused:
                break
        assert (await js.consumer_info(STREAM, contract.durable_name(QUEUE))).paused
        assert paused_gauge(w, "*") == 1.0
        await resume(js)
        await eventually(lambda: functions.completed["echo"] == ["maybe"], timeout=20)
    await nc.close()


async def test_a_function_paused_while_the_shared_consumer_serves_it_is_held_and_the_others_run(nats_server, functions):
    """The worker closes the shared consumer when a function pause lands (the command does too): nothing of a's
    is started while paused, b's calls run on consumers of their own, and after the resume the shared consumer is
    back."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    shared = contract.shared_consumer_name(QUEUE)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")):
        await enqueue(nc, "a", call_id="a-before")
        await eventually(lambda: functions.completed["a"] == ["a-before"])
        assert [c.name for c in await js.consumers_info(STREAM)] == [shared]
        await pause(js, "a")
        for i in range(3):
            await enqueue(nc, "a", call_id=f"a-{i}")
            await enqueue(nc, "b", call_id=f"b-{i}")
        await eventually(lambda: len(functions.completed["b"]) == 3)
        await asyncio.sleep(1.0)
        assert functions.calls["a"] == ["a-before"]
        assert (await consumer_back(js, STREAM, contract.function_consumer_name(QUEUE, "a"))).paused
        await resume(js, "a")
        await eventually(lambda: len(functions.completed["a"]) == 4, timeout=20)
        await enqueue(nc, "c", call_id="c-after")
        await eventually(lambda: functions.completed["c"] == ["c-after"], timeout=20)

        async def names() -> list[str]:
            return [c.name for c in await js.consumers_info(STREAM)]

        for _ in range(100):
            if await names() == [shared]:
                break
            await asyncio.sleep(0.1)
        assert await names() == [shared]
    assert sorted(functions.calls["a"]) == ["a-0", "a-1", "a-2", "a-before"]
    await nc.close()
