"""accept.py: what gets a 202 (stored), a 4xx (with the reason) or a 503, end to end."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from yarl import URL

from jetqueue import contract
from jetqueue.gateway.accept import MAX_RECENT, Accept
from jetqueue.gateway.backend import Backend
from jetqueue.gateway.routing import Routing
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import eventually


async def test_submit_to_callback_end_to_end(nats_server, functions, callbacks, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        base = f"http://127.0.0.1:{gw.s.http_port}"
        r = await post(
            http,
            f"{base}/async-function/echo/deep/path?x=1",
            b"hello",
            **{"X-Callback-Url": callbacks.url, "X-Call-Id": "my-call-1", "Content-Type": "text/plain"},
        )
        assert r.status == 202 and r.headers["X-Call-Id"] == "my-call-1" and int(r.headers["X-Start-Time"]) > 0
        await eventually(lambda: len(callbacks.received) == 1)
        headers, body = callbacks.received[0]
        assert headers["X-Call-Id"] == "my-call-1" and body == b"hello"
        req = functions.requests[0]
        assert req["path"] == "/deep/path" and req["query"] == "x=1"
        assert req["headers"]["Content-Type"] == "text/plain"
        async with http.get(f"{base}/async-calls/my-call-1") as s:
            record = await s.json()
        assert record["call_id"] == "my-call-1" and record["function"] == "echo" and record["queue"] == "faas-request"
        assert record["state"] == "succeeded" and record["status_code"] == 200 and record["attempt"] == 1


async def test_duplicate_call_id_runs_once(nats_server, functions, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        first = await post(http, url, b"a", **{"X-Call-Id": "same"})
        second = await post(http, url, b"a", **{"X-Call-Id": "same"})
        assert first.status == second.status == 202 and second.headers.get("X-Duplicate") == "true"
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        await asyncio.sleep(0.5)
    assert functions.calls["echo"] == ["same"]


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/async-function/Bad_Name", {}, 400, "function name"),
        ("/async-function/echo", {"X-Callback-Url": "not a url"}, 400, "X-Callback-Url"),
        ("/async-function/echo", {"X-Callback-Url": "ftp://x/y"}, 400, "X-Callback-Url"),
        ("/async-function/echo", {"X-Call-Id": "bad id!"}, 400, "X-Call-Id"),
        ("/async-function/echo", {"X-Concurrency-Key": "a key"}, 400, "X-Concurrency-Key"),
        ("/async-function/echo", {"X-Concurrency-Key": "k" * 129}, 400, "X-Concurrency-Key"),
    ],
)
async def test_bad_requests_get_4xx_with_a_reason(nats_server, http, path, headers, status, reason):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        async with http.post(f"http://127.0.0.1:{gw.s.http_port}{path}", headers=headers) as r:
            assert r.status == status
            assert reason in (await r.json())["error"]


async def test_body_limit_and_strict_routing_and_callback_allow_list(nats_server, http, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {"train": "ml"}, "queues": {"ml": {"streamReplicas": 1}}}))
    s = gateway_settings(
        nats_server.url,
        max_body_size=1000,
        strict_routing=True,
        routes_file=str(routes),
        callback_hosts="hooks.example",
    )
    async with running_gateway(s) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}/async-function"
        assert (await post(http, f"{base}/train", b"x" * 1001)).status == 413
        assert (await post(http, f"{base}/unknown", b"x")).status == 404
        assert (await post(http, f"{base}/train", b"x", **{"X-Callback-Url": "http://evil.internal/"})).status == 400
        ok = await post(http, f"{base}/train", b"x", **{"X-Callback-Url": "https://hooks.example/done"})
        assert ok.status == 202 and ok.headers["X-Queue"] == "ml"
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/metrics") as r:
            metrics = (await r.text()).splitlines()
        counted = [line for line in metrics if line.startswith("gateway_async_requests_total{")]
        assert sorted(counted) == [  # the 413 for the body limit comes from aiohttp, before the function is known
            'gateway_async_requests_total{code="202",function_name="train",queue_name="ml"} 1.0',
            'gateway_async_requests_total{code="400",function_name="train",queue_name="ml"} 1.0',
            'gateway_async_requests_total{code="404",function_name="_unrouted",queue_name=""} 1.0',
        ]
        assert "gateway_publish_seconds_count 1.0" in metrics
    nc = await connect(nats_server.url)
    assert (await nc.jetstream().stream_info("OF_ml")).state.messages == 1
    await nc.close()


async def test_a_call_larger_than_its_queue_can_hold_is_413_not_a_503_for_ever(nats_server, http, tmp_path):
    routes = tmp_path / "routes.json"
    routes.write_text(json.dumps({"routes": {"train": "ml"}, "queues": {"ml": {"maxQueueBytes": 2000}}}))
    async with running_gateway(gateway_settings(nats_server.url, routes_file=str(routes))) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/train"
        for headers in ({}, {"X-Delay": "1s"}):  # scheduled or not: it could never enter the queue
            r = await post(http, url, b"x" * 3000, **headers)
            assert r.status == 413, r.status
        assert (await post(http, url, b"x" * 100)).status == 202


async def test_nats_down_gives_503_and_recovers_without_restart(nats_server, functions, http):
    async with running_gateway(gateway_settings(nats_server.url, publish_timeout=1.0)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        accepted = []
        r = await post(http, url, b"before", **{"X-Call-Id": "before"})
        assert r.status == 202
        accepted.append("before")
        nats_server.stop()
        for i in range(5):
            r = await post(http, url, b"down", **{"X-Call-Id": f"down-{i}"})
            assert r.status == 503 and r.headers["Retry-After"]
        async with http.get(f"http://127.0.0.1:{gw.s.http_port}/readyz") as ready:
            assert ready.status == 503
        nats_server.start()

        async def submit_after() -> bool:
            resp = await post(http, url, b"after", **{"X-Call-Id": "after"})
            return resp.status == 202

        for _ in range(100):
            if await submit_after():
                break
            await asyncio.sleep(0.2)
        accepted.append("after")
        # Nothing that got a 202 was lost across the restart (file storage).
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: sorted(functions.completed["echo"]) == sorted(accepted), timeout=60)


async def test_a_request_over_max_payload_gets_413_with_the_real_limit_and_nothing_breaks(nats_server, http):
    """nats-server counts headers + payload against max_payload and closes the connection of a client
    that sends more: the gateway must refuse such a request itself, to the byte."""
    settings = gateway_settings(nats_server.url, max_body_size=4 * 1024 * 1024)
    async with running_gateway(settings) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        big = {"X-Call-Id": "big-1", "X-Padding": "p" * 200}
        async with http.post(url, data=b"x" * (1024 * 1024), headers=big) as r:
            assert r.status == 413
            reason = (await r.json())["error"]
        assert "1048576" in reason and "max_payload" in reason
        largest = int(reason.rsplit("largest body", 1)[1].split()[-2])
        assert (await post(http, url, b"x" * (largest + 1), **big)).status == 413
        assert (await post(http, url, b"x" * largest, **big)).status == 202  # the limit is exact, not a guess
        for i in range(20):  # still connected: nothing was knocked off NATS
            assert (await post(http, url, b"small", **{"X-Call-Id": f"small-{i}"})).status == 202
        assert gw.backend.connected


@pytest.mark.parametrize(
    "tail",
    [
        "/%2e%2e/admin",
        "/%2E%2e/admin",
        "/a/%2e/b",
        "/..%2fadmin",
        "/%2fsystem",
        "/a%5c..%5cb",
        "/a\\..\\b",
        "/%252e%252e/admin",
        "/..",
        "/./x",
    ],
)
async def test_no_path_climbs_out_of_its_function(nats_server, functions, http, tail):
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = URL(f"http://127.0.0.1:{gw.s.http_port}/async-function/echo{tail}", encoded=True)
        async with http.post(url, data=b"x") as r:
            assert r.status == 400, await r.text()
            assert "path" in (await r.json())["error"]


async def test_a_sub_path_reaches_the_function_as_sent(nats_server, functions, http):
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        url = URL(f"http://127.0.0.1:{gw.s.http_port}/async-function/echo/v1/a%20b/c%3Fd/..e?x=1", encoded=True)
        async with http.post(url, data=b"x") as r:
            assert r.status == 202
        await eventually(lambda: len(functions.requests) == 1)
        assert functions.requests[0]["raw_path"] == "/function/echo/v1/a%20b/c%3Fd/..e?x=1"


async def test_repeated_headers_and_compressed_answers_survive_the_trip(nats_server, functions, callbacks, http):
    import gzip

    async def gzipped(request, server):
        return web.Response(body=gzip.compress(b"zipped"), headers={"Content-Encoding": "gzip"})

    functions.handlers["zip"] = gzipped
    async with (
        running_gateway(gateway_settings(nats_server.url)) as gw,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        headers = [("X-Tag", "a"), ("X-Tag", "b"), ("Accept-Encoding", "gzip"), ("X-Callback-Url", callbacks.url)]
        async with http.post(f"http://127.0.0.1:{gw.s.http_port}/async-function/zip", data=b"x", headers=headers) as r:
            assert r.status == 202
        await eventually(lambda: len(callbacks.received) == 1)
    assert functions.requests[0]["headers"]["X-Tag"] == "a, b"
    received, body = callbacks.received[0]
    # Labelled, so the receiver (aiohttp here) decodes it; unlabelled gzip bytes would arrive as they are.
    assert received.get("Content-Encoding") == "gzip" and body == b"zipped"


async def test_a_lost_puback_is_an_honest_503_and_the_retry_runs_once(nats_server, functions, http):
    """A PubAck that does not come in time says nothing about whether the call was stored: the 503 must not
    claim it was not, and must give the call id to retry with (the duplicate window makes that safe)."""
    hasty = gateway_settings(nats_server.url, publish_timeout=1e-6)  # gives up before any PubAck can arrive
    async with (
        running_gateway(hasty) as gw1,
        running_gateway(gateway_settings(nats_server.url)) as gw2,
        running_worker(worker_settings(nats_server.url, functions.url_template)),
    ):
        async with http.post(f"http://127.0.0.1:{gw1.s.http_port}/async-function/echo", data=b"x") as r:
            assert r.status == 503
            text, call_id = (await r.json())["error"], r.headers["X-Call-Id"]
        assert "may" in text and "nothing was stored" not in text and call_id in text
        retry = {"X-Call-Id": call_id}
        async with http.post(f"http://127.0.0.1:{gw2.s.http_port}/async-function/echo", data=b"x", headers=retry) as r:
            assert r.status == 202
        await eventually(lambda: functions.completed["echo"] == [call_id])
        await asyncio.sleep(1)
        assert functions.calls["echo"] == [call_id]  # stored once, run once


async def test_a_full_queue_answers_503_queue_full_and_keeps_every_202(nats_server, functions, http):
    """Twelve calls into a queue that holds five: five 202s that all run, seven 503s that say why."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StreamConfig

    nc = await connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(
            name="OF_faas-request",
            subjects=["faas-request.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.NEW,
            max_msgs=5,
        )
    )
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        url = f"http://127.0.0.1:{gw.s.http_port}/async-function/echo"
        answers = []
        for i in range(12):
            async with http.post(url, data=b"x", headers={"X-Call-Id": f"c{i}"}) as r:
                answers.append((r.status, r.headers.get("Retry-After"), (await r.text())))
    accepted = [f"c{i}" for i, (status, _, _) in enumerate(answers) if status == 202]
    assert len(accepted) == 5
    assert all(s == 503 and retry and "queue full" in text for s, retry, text in answers[5:])
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await eventually(lambda: sorted(functions.completed["echo"]) == sorted(accepted))
    await nc.close()


async def test_recent_records_are_the_last_ones_accepted():
    s = gateway_settings("nats://127.0.0.1:1")
    routing = Routing.from_settings(s)
    accept = Accept(s, routing, Backend(s, routing), CollectorRegistry())  # not connected: records kept only here
    calls = [contract.Call(call_id=f"c{i}", queue="q", function="f") for i in range(MAX_RECENT + 2)]
    again = contract.Call(call_id="c1", queue="q", function="f")  # the same id again keeps its place
    for call in [*calls[:2], again, *calls[2:]]:
        await accept._record_queued(call)
    assert accept.recent("c0") is None and accept.recent("c1") is None  # the oldest two made room
    assert accept.recent("c2") is not None and accept.recent(f"c{MAX_RECENT + 1}") is not None
    assert len(accept._recent) == MAX_RECENT
