"""Faults under load, each ending with a ledger check (`make chaos` runs these three times)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.chaos.ledger import Ledger
from tests.helpers import (
    connect,
    enqueue,
    gateway_settings,
    running_gateway,
    running_worker,
    start_worker,
    worker_env,
    worker_settings,
)
from tests.servers import eventually

pytestmark = pytest.mark.slow  # chaos under load: one at a time beside the quick tests (tests/conftest.py)


def worker_process(nats_url: str, function_url: str, log: Path, **kw: str) -> subprocess.Popen[bytes]:
    env = worker_env(nats_url, function_url, initial_retry_wait="100ms", max_retry_wait="1s", **kw)
    return start_worker(env, log)


async def test_kill_9_worker_mid_flight(nats_server, functions, tmp_path):
    async def work(request, server):
        await asyncio.sleep(0.1)
        return web.Response(text="ok")

    functions.handlers["job"] = work
    ledger = Ledger("kill -9 a worker mid-flight")
    nc = await connect(nats_server.url)
    log = tmp_path / "w.log"
    first = worker_process(nats_server.url, functions.url_template, log, max_inflight="20", ack_wait="2s")
    await eventually(lambda: b"worker ready" in (tmp_path / "w.log").read_bytes(), timeout=30)
    ledger.accepted += await asyncio.gather(*(enqueue(nc, "job") for _ in range(300)))
    await eventually(lambda: len(functions.completed["job"]) >= 60)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = worker_process(nats_server.url, functions.url_template, log, max_inflight="20", ack_wait="2s")
    try:
        await eventually(lambda: set(ledger.accepted) <= set(functions.completed["job"]), timeout=90)
        await asyncio.sleep(0.5)
        # At most the in-flight window twice; and the calls the killed worker had acked but not yet recorded
        # keep no status record (the record follows the ack: a known window, at most max_inflight calls).
        await ledger.check(nc, functions.calls["job"], max_duplicates=40, max_unrecorded=20)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        await nc.close()


async def test_nats_down_for_10s_under_submission_load(nats_server, functions):
    ledger = Ledger("NATS down 10 s under submission load")
    async with running_gateway(gateway_settings(nats_server.url, publish_timeout=1.0)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        stop = asyncio.Event()

        async def client(http: aiohttp.ClientSession, n: int) -> None:
            i = 0
            while not stop.is_set():
                call_id = f"c{n}-{i}"
                i += 1
                async with http.post(url, data=b"x", headers={"X-Call-Id": call_id}) as r:
                    if r.status == 202:
                        ledger.accepted.append(call_id)
                    else:
                        assert r.status == 503, r.status  # never a 202 that was not stored
                        ledger.refused += 1
                await asyncio.sleep(0.01)

        async with aiohttp.ClientSession() as http:
            clients = [asyncio.create_task(client(http, n)) for n in range(5)]
            await asyncio.sleep(1)
            nats_server.stop()
            await asyncio.sleep(10)
            nats_server.start()
            await eventually(lambda: gw.backend.connected, timeout=30)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*clients)
    assert ledger.refused > 0 and len(ledger.accepted) > 0
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await eventually(lambda: set(ledger.accepted) <= set(functions.completed["echo"]), timeout=120)
        await asyncio.sleep(0.5)
    await ledger.check(nc, functions.calls["echo"], max_duplicates=0)
    await nc.close()


async def test_flapping_function_and_callback_receiver_down_then_back(nats_server, functions, callbacks):
    rng = random.Random(42)

    async def flapping(request, server):
        roll = rng.random()
        if roll < 0.3:
            return web.Response(status=503, text="flap")
        if roll < 0.45:
            await asyncio.sleep(2)  # beyond the upstream timeout: a platform error
        return web.Response(text="ok")

    functions.handlers["flap"] = flapping
    ledger = Ledger("function flapping 200/503/timeout, callback receiver down then back")
    callbacks.status = 503
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        upstream_timeout=0.5,
        max_retry_attempts=4,
        initial_retry_wait=0.1,
        max_retry_wait=0.3,
        callback_attempts=6,
    )
    async with running_worker(settings) as w:
        assert w.callbacks is not None
        ledger.accepted += await asyncio.gather(*(enqueue(nc, "flap", callback_url=callbacks.url) for _ in range(100)))
        await asyncio.sleep(2)
        callbacks.status = 200  # the receiver comes back
        await eventually(lambda: set(ledger.accepted) <= set(callbacks.by_call()), timeout=90)
    report = await ledger.check(nc, functions.calls["flap"], max_duplicates=400)  # retries are by design here
    assert report["final succeeded"] + report.get("final dead-lettered", 0) == 100
    counts = callbacks.tally("flapping function, receiver down then back", ledger.accepted)
    assert counts[1] == len(ledger.accepted)  # one final callback each
    await nc.close()


async def test_partition_between_the_clients_and_one_nats_node(tmp_path, functions):
    """The gateway and the worker reach node 1 through a proxy; the proxy cuts node 1 off mid-run. They fail
    over to the other nodes (R3 stream) and, once healed, the ledger holds."""
    from tests.chaos.proxy import TcpProxy
    from tests.servers import cluster

    servers = cluster(tmp_path / "cluster")
    proxy = await TcpProxy(servers[0].port).start()
    urls = ",".join([f"nats://127.0.0.1:{proxy.port}"] + [s.url for s in servers[1:]])
    ledger = Ledger("partition: clients cut off from one NATS node")
    try:
        async with (
            running_gateway(gateway_settings(urls, stream_replicas=3, publish_timeout=2.0)) as gw,
            running_worker(worker_settings(urls, functions.url_template, stream_replicas=3)),
        ):
            url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
            async with aiohttp.ClientSession() as http:
                for i in range(300):
                    if i == 100:
                        await proxy.cut()
                    if i == 200:
                        await proxy.heal()
                    call_id = f"p{i}"
                    for _ in range(50):  # a client retries a 503 with the same id (dedup makes it safe)
                        async with http.post(url, data=b"x", headers={"X-Call-Id": call_id}) as r:
                            if r.status == 202:
                                ledger.accepted.append(call_id)
                                break
                            ledger.refused += 1
                        await asyncio.sleep(0.1)
            await eventually(lambda: set(ledger.accepted) <= set(functions.completed["echo"]), timeout=120)
            await asyncio.sleep(0.5)
        nc = await connect(",".join(s.url for s in servers))
        assert len(ledger.accepted) == 300
        await ledger.check(nc, functions.calls["echo"], max_duplicates=50)
        await nc.close()
    finally:
        await proxy.cut()
        for s in servers:
            s.stop()
