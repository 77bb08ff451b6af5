"""The queue-worker against a real nats-server and real function and callback servers."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from jetqueue import contract
from jetqueue.provision import StreamSetupError
from jetqueue.queueworker.decision import RetryPolicy, parse_retry_after
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, dead_letters, enqueue, running_worker, worker_settings
from tests.servers import eventually


def sequence(*responses: tuple[int, dict[str, str]]):
    """A function answering the given statuses in turn, then 200."""
    state = {"n": 0}

    async def handler(request, server):
        i = state["n"]
        state["n"] += 1
        if i < len(responses):
            status, headers = responses[i]
            return web.Response(status=status, headers=headers, text=f"attempt {i + 1} failed")
        return web.Response(text="done")

    return handler


async def test_success_with_callback_and_request_fidelity(nats_server, functions, callbacks):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        call_id = await enqueue(
            nc,
            "echo",
            b"\x00\x01binary\xff",
            method="PUT",
            path="/sub/path",
            query="a=1&b=2",
            callback_url=callbacks.url,
            headers={"Content-Type": "application/x-thing", "X-Custom": "yes"},
        )
        await eventually(lambda: len(callbacks.received) == 1)
    req = functions.requests[0]
    assert req["method"] == "PUT" and req["path"] == "/sub/path" and req["query"] == "a=1&b=2"
    assert req["body"] == b"\x00\x01binary\xff"
    assert req["headers"]["X-Custom"] == "yes" and req["headers"]["X-Call-Id"] == call_id
    headers, body = callbacks.received[0]
    assert body == b"\x00\x01binary\xff"
    assert headers["X-Call-Id"] == call_id and headers["X-Function-Name"] == "echo"
    assert headers["X-Function-Status"] == "200" and headers["X-Retry"] == "1" and headers["X-Retry-Max"] == "10"
    assert headers["Content-Type"] == "application/x-thing"
    assert headers["User-Agent"].startswith("jetqueue/")
    assert float(headers["X-Duration-Seconds"]) >= 0 and int(headers["X-Start-Time"]) > 0
    await nc.close()


async def test_retries_then_success_with_backoff(nats_server, functions, callbacks):
    functions.handlers["flaky"] = sequence((503, {}), (500, {}))
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, initial_retry_wait=0.4)):
        call_id = await enqueue(nc, "flaky", b"x", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
    t = functions.times["flaky"]
    assert functions.calls["flaky"] == [call_id] * 3
    assert t[1] - t[0] >= 0.35 and t[2] - t[1] >= 0.75  # 0.4s then 0.8s (exponential, no jitter)
    headers, body = callbacks.received[0]
    assert headers["X-Function-Status"] == "200" and headers["X-Retry"] == "3" and body == b"done"
    await nc.close()


async def test_retry_after_is_honoured_but_not_below_minimum(nats_server, functions):
    functions.handlers["busy"] = sequence((429, {"Retry-After": "2"}), (503, {"Retry-After": "0"}))
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, initial_retry_wait=0.5)):
        await enqueue(nc, "busy")
        await eventually(lambda: len(functions.completed["busy"]) == 1)
    t = functions.times["busy"]
    assert t[1] - t[0] >= 1.9  # Retry-After: 2 beats the 0.5s backoff
    assert t[2] - t[1] >= 0.45  # Retry-After: 0 is raised to the minimum wait
    await nc.close()


def test_backoff_jitter_bounds():
    rng = random.Random(7)
    for mode, low, high in (("exponential", 1.0, 1.0), ("full", 0.0, 1.0), ("equal", 0.5, 1.0)):
        p = RetryPolicy(initial_wait=1, max_wait=8, backoff=mode)
        for attempt in range(1, 8):
            base = min(8.0, 2 ** (attempt - 1))
            for _ in range(200):
                d = p.delay(attempt, rng=rng)
                assert base * low - 1e-9 <= d <= base * high + 1e-9
    assert RetryPolicy(initial_wait=3).delay(1, retry_after=1) == 3
    assert parse_retry_after("120") == 120
    assert 9 <= (parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) or 0) <= 11
    assert parse_retry_after("soon") is None


async def test_exhausted_goes_to_dead_letters_with_final_callback(nats_server, functions, callbacks):
    async def always_500(request, server):
        return web.Response(status=500, text="boom: database unavailable")

    functions.handlers["broken"] = always_500
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template, max_retry_attempts=3, initial_retry_wait=0.1)
    async with running_worker(settings) as w:
        call_id = await enqueue(nc, "broken", b"payload", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
        await asyncio.sleep(0.3)
        assert w.metrics.dead_letters.labels("faas-request", "broken", "exhausted")._value.get() == 1
    assert len(functions.calls["broken"]) == 3
    (headers, body) = callbacks.received[0]
    assert b"database unavailable" in body
    assert headers["X-Retry"] == headers["X-Retry-Max"] == "3" and headers["X-Function-Status"] == "500"
    (dl,) = await dead_letters(nc)
    assert dl.data == b"payload" and dl.headers["X-Call-Id"] == call_id
    assert dl.headers[contract.H_DLQ_REASON] == "exhausted" and dl.headers[contract.H_DLQ_ATTEMPTS] == "3"
    assert "database unavailable" in dl.headers[contract.H_DLQ_ERROR]
    info = await nc.jetstream().stream_info("OF_faas-request")
    assert info.state.messages == 0  # terminated, not left behind
    await nc.close()


async def test_non_retryable_status_dead_letters_at_once(nats_server, functions, callbacks):
    async def not_found(request, server):
        return web.Response(status=404, text="no such thing")

    functions.handlers["gone"] = not_found
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await enqueue(nc, "gone", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
    assert len(functions.calls["gone"]) == 1
    assert callbacks.received[0][0]["X-Function-Status"] == "404"
    (dl,) = await dead_letters(nc)
    assert dl.headers[contract.H_DLQ_REASON] == "rejected"
    await nc.close()


async def test_platform_errors_are_retried(nats_server, callbacks):
    # Nothing listens on this port: connection refused on every attempt.
    from tests.servers import free_port

    url = f"http://127.0.0.1:{free_port()}/function/{{function}}"
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, url, max_retry_attempts=2, initial_retry_wait=0.1)):
        await enqueue(nc, "nowhere", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
    headers, body = callbacks.received[0]
    assert headers["X-Retry"] == "2" and headers["X-Function-Status"] == "503"
    assert b"Connect" in body or b"refused" in body
    await nc.close()


@pytest.mark.slow
async def test_long_job_runs_exactly_once(nats_server, functions):
    async def twenty_seconds(request, server):
        await asyncio.sleep(20)
        return web.Response(text="finally")

    functions.handlers["long"] = twenty_seconds
    nc = await connect(nats_server.url)
    async with running_worker(
        worker_settings(nats_server.url, functions.url_template, ack_wait=3.0, upstream_timeout=60.0)
    ):
        await enqueue(nc, "long")
        await eventually(lambda: len(functions.completed["long"]) == 1, timeout=60)
        await asyncio.sleep(4)  # past another ack_wait: a redelivery would show now
    assert len(functions.calls["long"]) == 1
    await nc.close()


async def test_max_inflight_never_exceeded(nats_server, functions):
    async def slowish(request, server):
        await asyncio.sleep(0.05)
        return web.Response(text="ok")

    functions.handlers["slowish"] = slowish
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_inflight=7)):
        await asyncio.gather(*(enqueue(nc, "slowish") for _ in range(150)))
        await eventually(lambda: len(functions.completed["slowish"]) == 150)
    assert functions.max_concurrent == 7
    await nc.close()


async def test_poison_messages_dead_lettered_and_worker_keeps_going(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        await js.publish("faas-request.Not_A_Function", b"x")
        await js.publish("faas-request.echo", b"y", headers={contract.H_METHOD: "BREW"})
        await js.publish("faas-request.echo", b"z", headers={contract.H_CALL_ID: "bad id with spaces"})
        good = await enqueue(nc, "echo", b"fine")
        await eventually(lambda: functions.completed["echo"] == [good])
        await eventually(
            lambda: (
                w.metrics.dead_letters.labels("faas-request", "_invalid", "undecodable")._value.get()
                + w.metrics.dead_letters.labels("faas-request", "echo", "undecodable")._value.get()
                == 3
            )
        )
    dls = await dead_letters(nc)
    assert len(dls) == 3 and all(d.headers[contract.H_DLQ_REASON] == "undecodable" for d in dls)
    await nc.close()


async def test_bare_nats_publish_is_a_call(nats_server, functions):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await nc.jetstream().publish("faas-request.echo.team-a", b"hello")  # name.namespace, no headers
        await eventually(lambda: len(functions.completed["echo.team-a"]) == 1)
    assert functions.requests[0]["method"] == "POST" and functions.requests[0]["call_id"].startswith("seq-")
    await nc.close()


async def test_existing_stream_and_consumer_are_adopted(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(
        StreamConfig(name="OF_faas-request", subjects=["faas-request.>"], retention=RetentionPolicy.WORK_QUEUE)
    )
    await js.add_consumer(
        "OF_faas-request",
        ConsumerConfig(durable_name="faas-request-workers", ack_policy=AckPolicy.EXPLICIT, ack_wait=7.0),
    )
    call_id = await enqueue(nc, "echo")
    async with running_worker(worker_settings(nats_server.url, functions.url_template, ack_wait=30.0)) as w:
        await eventually(lambda: functions.completed["echo"] == [call_id])
        assert w.processor is not None and w.processor.ctx.ack_wait == 7.0
    info = await js.consumer_info("OF_faas-request", "faas-request-workers")
    assert info.config.ack_wait == 7.0  # left as it was made
    await nc.close()


@pytest.mark.parametrize(
    ("stream", "consumer", "expect"),
    [
        (
            StreamConfig(name="OF_faas-request", subjects=["faas-request.>"], retention=RetentionPolicy.LIMITS),
            None,
            "retention 'limits'",
        ),
        (
            StreamConfig(name="OF_faas-request", subjects=["other.>"], retention=RetentionPolicy.WORK_QUEUE),
            None,
            "must take 'faas-request.>'",
        ),
        (
            StreamConfig(name="OF_faas-request", subjects=["faas-request.>"], retention=RetentionPolicy.WORK_QUEUE),
            ConsumerConfig(
                durable_name="faas-request-workers", ack_policy=AckPolicy.EXPLICIT, deliver_subject="push.x"
            ),
            "push consumer",
        ),
    ],
)
async def test_unworkable_stream_or_consumer_refused(nats_server, functions, stream, consumer, expect):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(stream)
    if consumer:
        await js.add_consumer("OF_faas-request", consumer)
    w = Worker(worker_settings(nats_server.url, functions.url_template))
    with pytest.raises(StreamSetupError, match=expect) as err:
        await w.start()
    await w.stop()
    assert "nats " in str(err.value) or "jetqueue " in str(err.value)  # says what to run to fix it
    assert (await js.stream_info("OF_faas-request")).config.subjects == stream.subjects  # never recreated
    await nc.close()


async def test_metrics_and_probes(nats_server, functions):
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(settings):
        await enqueue(nc, "echo")
        await eventually(lambda: len(functions.completed["echo"]) == 1)
        base = f"http://127.0.0.1:{settings.http_port}"
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as r:
                    assert r.status == 200
            await asyncio.sleep(0.1)
            async with http.get(base + "/metrics") as r:
                text = await r.text()
    for name in (
        "queue_worker_messages_processed_total",
        "queue_worker_pending_messages",
        "queue_worker_function_invocation_inflight",
        "queue_worker_nats_reconnect_total",
        "queue_worker_invocation_duration_seconds_bucket",
        "queue_worker_retries_total",
        "queue_worker_dead_letters_total",
        "queue_worker_callbacks_total",
    ):
        assert name in text, name
    assert (
        'queue_worker_messages_processed_total{function_name="echo",queue_name="faas-request",status="2xx"} 1.0' in text
    )
    assert "call_id" not in text
    await nc.close()


async def test_callback_receiver_down_then_back(nats_server, functions, callbacks):
    callbacks.status = 503
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        assert w.callbacks is not None
        w.callbacks.first_wait = 0.3
        await enqueue(nc, "echo", callback_url=callbacks.url)
        await asyncio.sleep(0.2)
        callbacks.status = 200
        await eventually(lambda: len(callbacks.received) == 1)
    await nc.close()


def test_settings_from_env_name_the_variable_and_hide_secrets():
    from jetqueue.settings import SettingsError, WorkerSettings

    s = WorkerSettings.from_env(
        {
            "JETQUEUE_NATS_PASSWORD": "hunter2",
            "JETQUEUE_ACK_WAIT": "1m30s",
            "JETQUEUE_RETRY_HTTP_CODES": "429, 503",
            "JETQUEUE_QUEUE": "ml",
        }
    )
    assert s.ack_wait == 90 and s.retry_http_codes == (429, 503)
    assert s.stream == "OF_ml" and s.durable == "ml-workers" and s.dlq_stream == "OF_ml_DLQ"
    assert "hunter2" not in repr(s) and "***" in repr(s)
    for env, name in (
        ((("JETQUEUE_MAX_INFLIGHT", "lots"),), "JETQUEUE_MAX_INFLIGHT"),
        ((("JETQUEUE_ACK_WAIT", "soon"),), "JETQUEUE_ACK_WAIT"),
        ((("JETQUEUE_BACKOFF", "linear"),), "JETQUEUE_BACKOFF"),
        ((("JETQUEUE_NATS_PASSWORD", "x"), ("JETQUEUE_STREAM_REPLICAS", "2")), "STREAM_REPLICAS"),
    ):
        with pytest.raises(SettingsError, match=name) as e:
            WorkerSettings.from_env(dict(env))
        assert "x" != str(e.value)


async def test_throughput_smoke(nats_server, functions):
    """Not a benchmark (see `make bench`): a sanity check that 1,000 calls flow without loss."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_inflight=50)):
        t0 = time.monotonic()
        acks = [
            js.publish("faas-request.echo", b"x", headers={"Nats-Msg-Id": f"c{i}", "X-Call-Id": f"c{i}"})
            for i in range(1000)
        ]
        await asyncio.gather(*acks)
        await eventually(lambda: len(functions.completed["echo"]) == 1000, timeout=120)
        print(f"1000 calls in {time.monotonic() - t0:.2f}s")
    assert sorted(functions.completed["echo"]) == sorted(f"c{i}" for i in range(1000))
    await nc.close()
