"""idempotency.py: a repeated Idempotency-Key answers the first call and enqueues nothing: on one gateway, across
two racing gateways, after a restart, and after a gateway died between its key record and its publish (or between
its publish and marking the record); a different request under the key is refused; the window is the queue's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from jetqueue import contract
from jetqueue.contract import Call, jetstream
from jetqueue.gateway import idempotency
from tests.helpers import connect, enqueue, gateway_settings, running_gateway, running_worker, worker_settings
from tests.servers import eventually

FN = "echo"


async def submit(
    http: aiohttp.ClientSession, base: str, key: str, body: bytes = b"same"
) -> tuple[int, dict[str, str], Any]:
    async with http.post(f"{base}/async-function/{FN}", data=body, headers={"Idempotency-Key": key}) as r:
        text = await r.read()
        return r.status, dict(r.headers), (json.loads(text) if text else {})


async def test_repeats_answer_the_first_call_across_gateways_and_restarts(nats_server, functions, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as one,
        running_gateway(gateway_settings(nats_server.url)) as two,
    ):
        bases = [f"http://127.0.0.1:{g.s.http_port}" for g in (one, two)]
        answers = await asyncio.gather(*(submit(http, bases[i % 2], '"order-42"') for i in range(20)))
        assert {a[0] for a in answers} == {202}
        ids = {a[1]["X-Call-Id"] for a in answers}
        assert len(ids) == 1, ids
        (call_id,) = ids
        assert sum(1 for a in answers if "X-Duplicate" not in a[1]) == 1  # one enqueued, the others answered
        status, headers, _ = await submit(http, bases[0], "order-42", b"another body")  # bare and quoted: one key
        assert status == 422
        status, _, doc = await submit(http, bases[0], "")
        assert status == 400 and "Idempotency-Key" in doc["error"]
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: functions.completed[FN] == [call_id], timeout=30)
            await asyncio.sleep(0.5)
    async with running_gateway(gateway_settings(nats_server.url)) as three:  # a new gateway: the key holds
        status, headers, doc = await submit(http, f"http://127.0.0.1:{three.s.http_port}", "order-42")
        assert status == 202 and headers["X-Call-Id"] == call_id and headers[idempotency.REPLAYED] == "true"
        assert doc["state"] == "succeeded" and doc["call_id"] == call_id
        status, headers, _ = await submit(http, f"http://127.0.0.1:{three.s.http_port}", "order-43")
        assert status == 202 and headers["X-Call-Id"] != call_id
    assert functions.calls[FN] == [call_id]


async def _pending(nc, key: str, call_id: str, start: int, age: float) -> None:
    """The record a gateway leaves when it dies after creating it, before marking it stored."""
    js = nc.jetstream()
    kv = await js.create_key_value(jetstream.idempotency_bucket(contract.DEFAULT_QUEUE, 86400.0))
    print_ = idempotency.fingerprint(Call(call_id, contract.DEFAULT_QUEUE, FN, body=b"same"))
    rec = {"call_id": call_id, "start": start, "fingerprint": print_, "at": time.time() - age, "state": "pending"}
    await kv.create(idempotency.record_key(FN, key), json.dumps(rec).encode())


async def test_a_gateway_dead_between_key_and_publish_or_publish_and_mark(nats_server, functions, http):
    nc = await connect(nats_server.url)
    try:
        async with running_gateway(gateway_settings(nats_server.url)) as gw:
            base = f"http://127.0.0.1:{gw.s.http_port}"
            start = time.time_ns()
            # Died before its publish, long ago: the repeat takes the key over and stores the call, under its id.
            await _pending(nc, "never-stored", "lost-1", start, age=600)
            # Died after its PubAck, a moment ago: the repeat publishes again, and the server drops the copy.
            await enqueue(nc, FN, b"same", call_id="stored-1", start_time_ns=start)
            await _pending(nc, "stored-fresh", "stored-1", start, age=1)
            # Died after its PubAck, long ago (past the stream's duplicate window): its status record tells.
            await enqueue(nc, FN, b"same", call_id="stored-2", start_time_ns=start)
            async with running_worker(worker_settings(nats_server.url, functions.url_template)):
                await eventually(lambda: {"stored-1", "stored-2"} <= set(functions.completed[FN]), timeout=30)
            await _pending(nc, "stored-old", "stored-2", start, age=600)
            for key, call_id in (("never-stored", "lost-1"), ("stored-fresh", "stored-1"), ("stored-old", "stored-2")):
                status, headers, _ = await submit(http, base, key)
                assert status == 202 and headers["X-Call-Id"] == call_id, (key, status, headers)
                again = await submit(http, base, key)
                assert again[0] == 202 and again[1]["X-Call-Id"] == call_id and again[1]["X-Duplicate"] == "true"
            async with running_worker(worker_settings(nats_server.url, functions.url_template)):
                await eventually(lambda: "lost-1" in functions.completed[FN], timeout=30)
                await asyncio.sleep(1.0)
        assert sorted(functions.calls[FN]) == ["lost-1", "stored-1", "stored-2"]
    finally:
        await nc.close()


async def test_the_window_is_the_queues(nats_server, functions, http, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {}, "queues": {contract.DEFAULT_QUEUE: {"idempotencyWindow": 1.5}}}))
    async with running_gateway(gateway_settings(nats_server.url, routes_file=str(routes))) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        first = await submit(http, base, "short")
        assert (await submit(http, base, "short"))[1]["X-Call-Id"] == first[1]["X-Call-Id"]
        await asyncio.sleep(3.0)  # past the window: the key is forgotten, a new call
        later = await submit(http, base, "short")
        assert later[0] == 202 and later[1]["X-Call-Id"] != first[1]["X-Call-Id"] and "X-Duplicate" not in later[1]


async def test_a_mark_after_the_record_was_removed_puts_it_back(nats_server):
    """A repeat stored the call while the first publish, refused, removed the record: the key stands for it again."""
    nc = await connect(nats_server.url)
    try:
        kv = await nc.jetstream().create_key_value(jetstream.idempotency_bucket(contract.DEFAULT_QUEUE, 86400.0))
        rec = {"call_id": "c-1", "start": 1, "fingerprint": "f", "at": time.time()}
        revision = await kv.create("k", json.dumps({**rec, "state": "pending"}).encode())
        await kv.delete("k", last=revision)
        await idempotency._mark(kv, "k", revision, rec)
        assert json.loads((await kv.get("k")).value or b"{}")["state"] == "stored"
    finally:
        await nc.close()
