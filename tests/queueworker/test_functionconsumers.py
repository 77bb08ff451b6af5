"""functionconsumers.py: function consumers in memory, made past the server's consumer limit in turn, and never
removed while a call is pending on them. The function mode these tests run in has a function paused
(`hold_function_consumers`): without that the shared consumer would serve their calls."""

from __future__ import annotations

import asyncio

from aiohttp import web

from jetqueue.queueworker import functionmode
from tests.helpers import connect, enqueue, hold_function_consumers, running_worker, worker_settings
from tests.servers import eventually


async def consumers_of(nc) -> int:
    return int((await nc.jetstream().stream_info("OF_faas-request")).state.consumer_count)


async def test_function_consumers_keep_their_state_in_memory(nats_server, functions):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, mode="function")):
        await hold_function_consumers(nc.jetstream())
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        info = await nc.jetstream().consumer_info("OF_faas-request", "faas-request-fn-echo")
    assert info.config.mem_storage is True
    assert info.config.num_replicas in (0, None, 1)  # the stream's replicas
    await nc.close()


async def test_more_functions_than_the_server_allows_consumers_all_run(nats_server, functions):
    """nats-server 2.15 allows 1,000 consumers per stream: 1,200 functions with a call each all run, through at
    most 2 × max_inflight consumers at once, each given up as soon as its function has drained."""
    nc = await connect(nats_server.url)
    names = [f"fn{i}" for i in range(1200)]
    settings = worker_settings(nats_server.url, functions.url_template, mode="function", max_inflight=20)
    async with running_worker(settings) as w:
        mode = w.function_mode
        assert mode is not None and mode.max_consumers == 40
        await hold_function_consumers(nc.jetstream())
        held, on_server = 0, 0

        async def watch() -> None:
            nonlocal held, on_server
            while True:
                held = max(held, len(mode.functions) + len(mode.parts["OF_faas-request"].consumers.opening))
                on_server = max(on_server, await consumers_of(nc))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        for start in range(0, len(names), 200):
            await asyncio.gather(*(enqueue(nc, n, call_id=f"{n}-1") for n in names[start : start + 200]))
        await eventually(lambda: sum(len(functions.completed[n]) for n in names) == len(names), timeout=120)
        watcher.cancel()
    print(f"1,200 functions: at most {held} consumers held by the worker, {on_server} on the server")
    assert all(functions.completed[n] == [f"{n}-1"] for n in names)
    assert held <= 40 and on_server < 200, (held, on_server)
    await nc.close()


async def test_a_consumer_with_a_call_waiting_to_retry_is_not_removed(nats_server, functions, monkeypatch):
    """Under pressure a drained function gives its consumer up, but one holding a NAKed call (a short retry wait)
    is left to the server: removing it would start that call's attempts again. Three attempts mean three."""
    monkeypatch.setattr(functionmode, "MIN_CONSUMERS", 1)
    monkeypatch.setattr(functionmode, "MAX_CONSUMERS", 1)

    async def busy(request, server):
        return web.Response(status=503)

    functions.handlers["busy"] = busy
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        mode="function",
        max_inflight=1,
        max_retry_attempts=3,
        initial_retry_wait=0.5,  # under schedule.HOLD_AT_LEAST: a NAK with delay, pending on the consumer
        max_retry_wait=0.5,
    )
    async with running_worker(settings) as w:
        await hold_function_consumers(nc.jetstream())
        await enqueue(nc, "busy")
        for i in range(40):  # others keep waiting for the one consumer
            await enqueue(nc, f"other{i % 8}")
            await asyncio.sleep(0.05)
        await eventually(
            lambda: w.metrics.dead_letters.labels("faas-request", "busy", "exhausted")._value.get() == 1, timeout=30
        )
        await eventually(lambda: sum(len(functions.completed[f"other{i}"]) for i in range(8)) == 40, timeout=30)
    assert len(functions.calls["busy"]) == 3
    await nc.close()


async def test_1200_functions_with_a_call_each_run_through_one_shared_consumer(nats_server, functions):
    """With no function needing a consumer of its own, the server holds one consumer whatever the functions."""
    nc = await connect(nats_server.url)
    names = [f"fn{i}" for i in range(1200)]
    settings = worker_settings(nats_server.url, functions.url_template, mode="function", max_inflight=20)
    async with running_worker(settings):
        on_server = 0

        async def watch() -> None:
            nonlocal on_server
            while True:
                on_server = max(on_server, await consumers_of(nc))
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        for start in range(0, len(names), 200):
            await asyncio.gather(*(enqueue(nc, n, call_id=f"{n}-1") for n in names[start : start + 200]))
        await eventually(lambda: sum(len(functions.completed[n]) for n in names) == len(names), timeout=120)
        watcher.cancel()
    assert all(functions.completed[n] == [f"{n}-1"] for n in names)
    assert on_server == 1
    await nc.close()
