"""tags.py and DELETE /async-calls?tag=: tags are checked, kept in the status records, and a tag's calls not
finished are cancelled through the single cancel's code, counted; untagged and other tags' calls are untouched."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.helpers import gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import eventually


async def test_cancel_by_tag(nats_server, functions, http):
    started = asyncio.Event()

    async def slow(request, server):
        started.set()
        await asyncio.sleep(30)
        return web.Response(text="late")

    functions.handlers["slow"] = slow
    async with running_gateway(gateway_settings(nats_server.url, partitions=2)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        for call_id, tagged in (("a", "t1"), ("b", "t1, t2"), ("c", "t2"), ("d", None), ("e", "T-3_x")):
            headers = {"X-Call-Id": call_id, **({"X-Call-Tags": tagged} if tagged else {})}
            assert (await post(http, f"{base}/async-function/echo", b"", **headers)).status == 202
        batch = [
            {"function": "echo", "callId": "f", "tags": ["t1"]},
            {"function": "other", "callId": "g", "tags": "t1"},
        ]
        async with http.post(f"{base}/async-batch", data=json.dumps(batch)) as r:
            assert (await r.json())["accepted"] == 2
        for bad in ("a b", ",", "x" * 33, "1,2,3,4,5,6", "a.b"):
            r = await post(http, f"{base}/async-function/echo", b"", **{"X-Call-Tags": bad})
            assert r.status == 400, bad
        for query in ("", "?tag=", "?tag=a.b"):
            async with http.delete(f"{base}/async-calls{query}") as r:
                assert r.status == 400
        async with http.get(f"{base}/async-calls/b") as r:
            assert (await r.json())["tags"] == ["t1", "t2"]

        async with http.delete(f"{base}/async-calls?tag=t1") as r:
            assert r.status == 200
            assert await r.json() == {
                "tag": "t1",
                "matched": 4,
                "cancelled": 4,
                "cancelling": 0,
                "finished": 0,
                "unknown": 0,
                "failed": 0,
            }
        async with http.delete(f"{base}/async-calls?tag=t1") as r:  # again: nothing left to cancel
            assert (await r.json())["finished"] == 4
        async with http.delete(f"{base}/async-calls?tag=none") as r:
            assert (await r.json())["matched"] == 0

        async with running_worker(worker_settings(nats_server.url, functions.url_template, partitions=2)):
            await eventually(lambda: sorted(functions.completed["echo"]) == ["c", "d", "e"], timeout=30)
            assert (
                await post(http, f"{base}/async-function/slow", b"", **{"X-Call-Id": "s", "X-Call-Tags": "run"})
            ).status == 202
            await asyncio.wait_for(started.wait(), 30)
            for _ in range(200):
                async with http.get(f"{base}/async-calls/s") as r:
                    if (await r.json())["state"] == "running":
                        break
                await asyncio.sleep(0.05)
            async with http.delete(f"{base}/async-calls?tag=run") as r:
                assert (await r.json())["cancelling"] == 1

            async def cancelled() -> bool:
                async with http.get(f"{base}/async-calls/s") as r:
                    return bool((await r.json())["state"] == "cancelled")

            for _ in range(400):
                if await cancelled():
                    break
                await asyncio.sleep(0.05)
            assert await cancelled()
            await asyncio.sleep(0.5)
        for call_id in ("a", "b", "f", "g"):
            async with http.get(f"{base}/async-calls/{call_id}") as r:
                assert (await r.json())["state"] == "cancelled"
        assert functions.calls["other"] == [] and "f" not in functions.calls["echo"]
