"""results.py: a call's result kept with its final status record, large bodies in the queue's object store, cut and
marked past the worker's limit; read through `GET /async-calls/{id}/result` and `jetqueue result`."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web

from jetqueue import contract
from jetqueue.ops import results as ops_results
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_small_large_truncated_and_missing_results(nats_server, functions, http):
    big = bytes(range(256)) * 100  # 25,600 bytes: over the inline size, under the limit
    huge = b"h" * 50_000  # over the limit below

    async def answer(request, server):
        size = request.query.get("size", "small")
        if size == "none":  # the connection dropped: no answer, so no result
            assert request.transport is not None
            request.transport.abort()
            await asyncio.sleep(1)
        body = {"small": b'{"ok": true}', "big": big, "huge": huge}[size]
        status = 500 if size == "huge" else 200
        return web.Response(body=body, status=status, headers={"Content-Type": "application/x-test", "X-Extra": "1"})

    functions.handlers["answer"] = answer
    settings = worker_settings(nats_server.url, functions.url_template, result_max_bytes=40_000, max_retry_attempts=1)
    async with running_gateway(gateway_settings(nats_server.url)) as gw, running_worker(settings):
        base = f"http://127.0.0.1:{gw.s.http_port}"
        for size in ("small", "big", "huge"):
            assert (
                await post(http, f"{base}/async-function/answer?size={size}", b"", **{"X-Call-Id": size})
            ).status == 202

        async def final(call_id: str) -> bool:
            async with http.get(f"{base}/async-calls/{call_id}") as r:
                return r.status == 200 and (await r.json())["state"] in ("succeeded", "dead-lettered", "failed")

        for call_id in ("small", "big", "huge"):
            await until(partial(final, call_id))

        async with http.get(f"{base}/async-calls/small/result") as r:
            assert r.status == 200 and await r.read() == b'{"ok": true}'
            assert r.headers["Content-Type"] == "application/x-test" and r.headers["X-Function-Status"] == "200"
            assert "X-Result-Truncated" not in r.headers
        async with http.get(f"{base}/async-calls/big/result") as r:
            assert r.status == 200 and await r.read() == big
        async with http.get(f"{base}/async-calls/huge/result?format=json") as r:
            doc = await r.json()
            assert doc["status"] == 500 and doc["truncated"] and doc["size"] == 50_000
            assert base64.b64decode(doc["body"]) == huge[:40_000] and doc["headers"]["X-Extra"] == "1"
            assert r.headers["X-Result-Truncated"] == "true; size=50000"
        async with http.get(f"{base}/async-calls/big") as r:  # the status shows the result's facts, not its body
            rec = await r.json()
            assert rec["result"]["size"] == len(big) and "body" not in rec["result"] and "object" not in rec["result"]

        nc = await connect(nats_server.url)
        try:  # the large body is in the object store, not in the key-value record
            obs = await nc.jetstream().object_store(contract.result_bucket_name(contract.DEFAULT_QUEUE))
            names = {o.name for o in await obs.list()}
            assert any(n.startswith("big.") for n in names) and not any(n.startswith("small.") for n in names)
            out = io.BytesIO()
            assert await ops_results.result(nc.jetstream(), "big", out, io.StringIO()) == 0
            assert out.getvalue() == big
            assert await ops_results.result(nc.jetstream(), "nope", io.BytesIO(), io.StringIO()) == 1
        finally:
            await nc.close()

        assert (await post(http, f"{base}/async-function/answer?size=none", b"", **{"X-Call-Id": "none"})).status == 202
        await until(lambda: final("none"))
        async with http.get(f"{base}/async-calls/none/result") as r:
            assert r.status == 404 and "no result" in (await r.json())["error"]


async def test_no_result_before_the_end_and_none_when_off(nats_server, functions, http):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        assert (await post(http, f"{base}/async-function/echo", b"hi", **{"X-Call-Id": "early"})).status == 202
        async with http.get(f"{base}/async-calls/early/result") as r:
            assert r.status == 409 and "Retry-After" in r.headers
        async with running_worker(worker_settings(nats_server.url, functions.url_template, result_max_bytes=0)):

            async def done() -> bool:
                async with http.get(f"{base}/async-calls/early") as r:
                    return bool((await r.json())["state"] == "succeeded")

            await until(done)
        async with http.get(f"{base}/async-calls/early/result") as r:
            assert r.status == 404
