"""X-Failure-Callback-Url: a callback sent only when the call ends failed (dead-lettered or expired), through
the same durable machinery as X-Callback-Url (stored before the settle, retried, signed); never for a success or
a cancel. Real gateway, worker, functions and receivers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from aiohttp import web

from jetqueue import signing
from tests.helpers import (
    connect,
    enqueue,
    gateway_settings,
    post,
    running_gateway,
    running_worker,
    start_worker,
    worker_env,
    worker_settings,
)
from tests.servers import CallbackReceiver, eventually


async def test_only_failed_ends_reach_the_failure_callback(nats_server, functions, callbacks):
    failures = await CallbackReceiver().start()

    async def reject(request, server):
        return web.Response(status=400, text="bad input")

    async def down(request, server):
        return web.Response(status=503, text="down")

    functions.handlers.update(reject=reject, down=down)
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        max_retry_attempts=2,
        max_event_age=3600.0,
        callback_signing_keys="k1:0123456789abcdef",
    )
    both = {"callback_url": callbacks.url, "failure_callback_url": failures.url}
    try:
        async with running_worker(settings):
            ok = await enqueue(nc, "echo", b"fine", **both)
            rejected = await enqueue(nc, "reject", b"x", **both)
            exhausted = await enqueue(nc, "down", b"x", **both)
            expired = await enqueue(nc, "echo", b"x", start_time_ns=time.time_ns() - 7200 * 10**9, **both)
            alone = await enqueue(nc, "reject", b"x", failure_callback_url=failures.url)  # without X-Callback-Url
            await eventually(lambda: len(failures.received) == 4 and len(callbacks.received) == 4, timeout=60)
            await asyncio.sleep(1.0)  # nothing more comes
    finally:
        await failures.stop()
        await nc.close()
    got = {h["X-Call-Id"]: (h, body) for h, body in failures.received}
    assert set(got) == {rejected, exhausted, expired, alone}
    assert {i: h["X-Call-Status"] for i, (h, _) in got.items()} == {
        rejected: "failed",
        exhausted: "dead-lettered",
        expired: "expired",
        alone: "failed",
    }
    h, body = got[exhausted]
    assert (
        body == b"down" and h["X-Function-Status"] == "503" and h["X-Retry"] == h["X-Retry-Max"] == "1"
    )  # OpenFaaS counts retries: attempt-1, max-1
    assert signing.HEADER in h  # signed as every callback
    assert {h["X-Call-Id"] for h, _ in callbacks.received} == {ok, rejected, exhausted, expired}
    assert len(failures.received) == 4 and len(callbacks.received) == 4


async def test_a_cancelled_call_gets_no_failure_callback(nats_server, functions, callbacks, http):
    failures = await CallbackReceiver().start()
    started = asyncio.Event()

    async def slow(request, server):
        started.set()
        await asyncio.sleep(30)
        return web.Response(text="late")

    functions.handlers["slow"] = slow
    try:
        async with (
            running_gateway(gateway_settings(nats_server.url)) as gw,
            running_worker(worker_settings(nats_server.url, functions.url_template)),
        ):
            base = f"http://127.0.0.1:{gw.s.http_port}"
            headers = {"X-Callback-Url": callbacks.url, "X-Failure-Callback-Url": failures.url, "X-Call-Id": "c1"}
            assert (await post(http, f"{base}/async-function/slow", b"x", **headers)).status == 202
            await asyncio.wait_for(started.wait(), 30)
            async with http.delete(f"{base}/async-calls/c1") as r:
                assert r.status == 202
            await eventually(lambda: len(callbacks.received) == 1, timeout=30)
            await asyncio.sleep(1.0)
    finally:
        await failures.stop()
    assert callbacks.received[0][0]["X-Call-Status"] == "cancelled"
    assert failures.received == []


async def test_the_gateway_checks_the_failure_callback_url_and_stores_it(nats_server, http):
    nc = await connect(nats_server.url)
    async with running_gateway(gateway_settings(nats_server.url, callback_hosts="hooks.example")) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        async with http.post(url, headers={"X-Failure-Callback-Url": "ftp://x/y"}) as r:
            assert r.status == 400 and "X-Failure-Callback-Url" in (await r.json())["error"]
        async with http.post(url, headers={"X-Failure-Callback-Url": "https://evil.example/"}) as r:
            assert r.status == 400 and "allowed callback hosts" in (await r.json())["error"]
        ok = await post(http, url, b"x", **{"X-Failure-Callback-Url": "https://hooks.example/failed"})
        assert ok.status == 202
    js = nc.jetstream()
    stored = await js.get_last_msg("OF_faas-request", "faas-request.echo")
    await nc.close()
    headers = stored.headers or {}
    assert headers["Jq-Failure-Callback-Url"] == "https://hooks.example/failed"
    assert not any(k.startswith("Jq-Header-X-Failure") for k in headers)  # not forwarded to the function


async def test_a_worker_killed_after_the_dead_letter_loses_no_failure_callback(nats_server, functions, tmp_path):
    """Calls are dead-lettered (and terminated) while the receiver is down; the worker is killed -9; the next
    worker delivers every stored failure callback, once."""
    failures = await CallbackReceiver().start()
    failures.status = 503

    async def reject(request, server):
        return web.Response(status=422)

    functions.handlers["reject"] = reject
    nc = await connect(nats_server.url)
    env = worker_env(nats_server.url, functions.url_template)
    log = tmp_path / "w.log"
    first = start_worker(env, log)
    await eventually(lambda: b"worker ready" in log.read_bytes(), timeout=30)
    ids = [await enqueue(nc, "reject", failure_callback_url=failures.url) for _ in range(10)]
    await eventually(lambda: set(ids) <= set(functions.calls["reject"]), timeout=30)
    info = nc.jetstream()
    for _ in range(100):  # every call settled (terminated after its dead letter)
        if not (await info.stream_info("OF_faas-request")).state.messages:
            break
        await asyncio.sleep(0.1)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    failures.status = 200
    second = start_worker(env, log)
    try:
        await eventually(lambda: set(ids) <= set(failures.by_call()), timeout=60)
        await asyncio.sleep(1)
        assert all(len(failures.by_call()[i]) == 1 for i in ids)
    finally:
        second.send_signal(signal.SIGTERM)
        for _ in range(600):
            if second.poll() is not None:
                break
            await asyncio.sleep(0.05)
        await failures.stop()
        await nc.close()
