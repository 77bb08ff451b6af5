"""tags.py and DELETE /async-calls?tag=: tags are checked, kept in the status records, and a tag's calls not
finished are cancelled through the single cancel's code, counted; untagged and other tags' calls are untouched."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.helpers import (
    connect,
    gateway_settings,
    post,
    running_gateway,
    running_worker,
    status_record,
    worker_settings,
)
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
        repeated = [("X-Call-Tags", "a"), ("X-Call-Tags", "b,c,d,e,f")]  # six once folded: refused, not dropped
        async with http.post(f"{base}/async-function/echo", data=b"", headers=repeated) as r:
            assert r.status == 400
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


async def test_a_tag_cancels_its_own_call_when_another_queue_has_one_under_the_same_id(nats_server, http, tmp_path):
    """A caller's own X-Call-Id in two queues: the tag's call is cancelled in its own queue, the other untouched."""
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {"fa": "qa", "fb": "qb"}, "queues": {"qa": {}, "qb": {}}}))
    nc = await connect(nats_server.url)
    async with running_gateway(gateway_settings(nats_server.url, routes_file=str(routes))) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        assert (
            await post(http, f"{base}/async-function/fa", b"", **{"X-Call-Id": "job-1", "X-Call-Tags": "t1"})
        ).status == 202
        await asyncio.sleep(0.01)  # the later start: what a lookup by id alone would pick
        assert (await post(http, f"{base}/async-function/fb", b"", **{"X-Call-Id": "job-1"})).status == 202
        async with http.delete(f"{base}/async-calls?tag=t1") as r:
            assert (await r.json())["cancelled"] == 1
        states = {}
        for queue in ("qa", "qb"):
            record = await status_record(nc, "job-1", queue)
            states[queue] = record and record["state"]
    assert states == {"qa": "cancelled", "qb": "queued"}
    await nc.close()
