"""batch.py: POST /async-batch stores every accepted call before answering, answers each on its own (as a single
submission would), and refuses a batch over its limits whole."""

from __future__ import annotations

import base64
import json

from jetqueue import contract
from tests.helpers import connect, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually


async def test_each_call_answered_and_stored(nats_server, functions, http):
    calls = [
        {"function": "echo", "body": "text body", "callId": "b-1", "tags": ["t1"]},
        {"function": "echo", "bodyBase64": base64.b64encode(b"\x00\xff").decode(), "path": "/sub?q=1", "method": "PUT"},
        {"function": "Bad Name"},
        {"function": "echo", "callId": "b-1"},  # the same id: a duplicate, stored once
        {"function": "echo", "body": "x", "bodyBase64": "eA=="},
        {"function": "echo", "callbackUrl": "ftp://nope"},
        {"function": "echo", "delay": "1h", "headers": {"X-Custom": "yes"}},
        "not an object",
        {"function": "echo", "idempotencyKey": "batch-key", "body": "k"},
        {"function": "echo", "idempotencyKey": "batch-key", "body": "k"},
    ]
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        async with http.post(f"{base}/async-batch", data=json.dumps(calls)) as r:
            assert r.status == 200
            doc = await r.json()
        results = doc["results"]
        assert [x["status"] for x in results] == [202, 202, 400, 202, 400, 400, 202, 400, 202, 202]
        assert doc["accepted"] == 6 and doc["refused"] == 4
        assert results[0]["callId"] == results[3]["callId"] == "b-1"  # one call id: stored once, either may be first
        assert [bool(results[i].get("duplicate")) for i in (0, 3)].count(True) == 1
        assert results[8]["callId"] == results[9]["callId"]  # one key: one call, whichever publish landed first
        assert [bool(x.get("duplicate")) for x in results[8:]].count(True) == 1
        assert "notBefore" in results[6] and results[0]["queue"] == contract.DEFAULT_QUEUE
        assert "DNS-1123" in results[2]["error"] and "both" in results[4]["error"]
        nc = await connect(nats_server.url)
        try:  # stored before the answer: the stream holds them now, no worker has run yet
            info = await nc.jetstream().stream_info(contract.stream_name(contract.DEFAULT_QUEUE))
            assert info.state.messages == 3  # b-1, the PUT, the keyed one (the delayed one is held)
        finally:
            await nc.close()
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: len(functions.calls["echo"]) == 3, timeout=30)
        put = next(r for r in functions.requests if r["method"] == "PUT")
        assert put["body"] == b"\x00\xff" and put["path"].endswith("/sub") and put["query"] == "q=1"


async def test_limits_refuse_the_whole_batch(nats_server, http):
    async with running_gateway(gateway_settings(nats_server.url, max_batch_calls=3, max_batch_bytes=2000)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-batch"
        for body, status, why in (
            (json.dumps([{"function": "echo"}] * 4), 413, "maxBatchCalls = 3"),
            (json.dumps([{"function": "echo", "body": "x" * 3000}]), 413, "maxBatchBytes"),
            ("{not json", 400, "JSON array"),
            ("[]", 400, "non-empty"),
            (json.dumps({"function": "echo"}), 400, "array"),
        ):
            async with http.post(url, data=body) as r:
                assert r.status == status and why in (await r.json())["error"], (body[:40], r.status)
        injected = [
            {"function": "echo", "headers": {"X-A\r\nNats-Msg-Id": "x"}},
            {"function": "echo", "headers": {"X-A\n": "x"}},
            {"function": "echo", "headers": {"X-A": "x\r\nNats-Msg-Id: y"}},
            {"function": "echo", "callbackUrl": "http://127.0.0.1:9/\r\nX: y"},
        ]
        for pair in (injected[:2], injected[2:]):  # maxBatchCalls = 3
            async with http.post(url, data=json.dumps(pair)) as r:
                assert [x["status"] for x in (await r.json())["results"]] == [400, 400]
        nc = await connect(nats_server.url)
        try:
            info = await nc.jetstream().stream_info(contract.stream_name(contract.DEFAULT_QUEUE))
            assert info.state.messages == 0
        finally:
            await nc.close()
        async with http.post(url, data=json.dumps([{"function": "echo"}] * 3)) as r:
            assert r.status == 200 and (await r.json())["accepted"] == 3


async def test_a_concurrency_key_field_is_checked_and_stored_with_the_call(nats_server, http):
    calls = [{"function": "echo", "concurrencyKey": "customer-7"}, {"function": "echo", "concurrencyKey": "a b"}]
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        async with http.post(f"http://127.0.0.1:{gw.s.http_port}/async-batch", data=json.dumps(calls)) as r:
            results = (await r.json())["results"]
        assert [x["status"] for x in results] == [202, 400] and "X-Concurrency-Key" in results[1]["error"]
        nc = await connect(nats_server.url)
        try:
            msg = await nc.jetstream().get_msg(contract.stream_name(contract.DEFAULT_QUEUE), 1)
            assert (msg.headers or {})[contract.H_CONCURRENCY_KEY] == "customer-7"
        finally:
            await nc.close()


async def test_a_priority_field_is_checked_and_stored_on_its_level(nats_server, functions, http, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {}, "queues": {contract.DEFAULT_QUEUE: {"priorities": True}}}))
    async with running_worker(worker_settings(nats_server.url, functions.url_template, priorities=True)):
        pass  # the levels' subjects and consumers
    calls = [{"function": "echo", "priority": "high"}, {"function": "echo", "priority": "urgent"}]
    async with running_gateway(gateway_settings(nats_server.url, routes_file=str(routes))) as gw:
        async with http.post(f"http://127.0.0.1:{gw.s.http_port}/async-batch", data=json.dumps(calls)) as r:
            results = (await r.json())["results"]
        assert [x["status"] for x in results] == [202, 400] and "X-Priority" in results[1]["error"]
        nc = await connect(nats_server.url)
        try:
            msg = await nc.jetstream().get_msg(contract.stream_name(contract.DEFAULT_QUEUE), 1)
            assert msg.subject == contract.subject(contract.DEFAULT_QUEUE, "echo", 0, contract.Priority.HIGH)
            assert (msg.headers or {})[contract.H_PRIORITY] == "high"
        finally:
            await nc.close()
