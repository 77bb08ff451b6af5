"""handle.py: one message carried out (invoke, retry, dead-letter, call back) on a real nats-server."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from jetqueue import contract
from tests.helpers import connect, dead_letters, enqueue, running_worker, status_record, worker_settings
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
    assert headers["X-Function-Status"] == "200" and headers["X-Retry"] == "0" and headers["X-Retry-Max"] == "9"
    assert headers["Content-Type"] == "application/x-thing"
    assert headers["User-Agent"].startswith("queue-worker/")  # as OpenFaaS sends
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
    assert headers["X-Function-Status"] == "200" and headers["X-Retry"] == "2" and body == b"done"
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


async def test_exhausted_goes_to_dead_letters_with_final_callback(nats_server, functions, callbacks):
    async def always_500(request, server):
        return web.Response(status=500, text="boom: database unavailable")

    functions.handlers["broken"] = always_500
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template, max_retry_attempts=3, initial_retry_wait=0.1)
    async with running_worker(settings) as w:
        call_id = await enqueue(nc, "broken", b"payload", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
        # Counted after the dead letter is stored, which may be after the callback (stored first) arrived.
        await eventually(lambda: w.metrics.dead_letters.labels("faas-request", "broken", "exhausted")._value.get() == 1)
    assert len(functions.calls["broken"]) == 3
    (headers, body) = callbacks.received[0]
    assert b"database unavailable" in body
    assert headers["X-Retry"] == headers["X-Retry-Max"] == "2" and headers["X-Function-Status"] == "500"
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
    assert headers["X-Retry"] == headers["X-Retry-Max"] == "1" and headers["X-Function-Status"] == "503"
    assert b"Connect" in body or b"refused" in body
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
    assert functions.requests[0]["method"] == "POST" and functions.requests[0]["call_id"].startswith("faas-request-1-")
    await nc.close()


async def test_calls_without_an_id_get_ids_unique_across_queues(nats_server, functions):
    """Both queues' first bare message is stream sequence 1: their ids, status records and cancels must
    still be their own."""
    nc = await connect(nats_server.url)
    url = functions.url_template
    async with (
        running_worker(worker_settings(nats_server.url, url, queue="alpha")),
        running_worker(worker_settings(nats_server.url, url, queue="beta")),
    ):
        await nc.jetstream().publish("alpha.echo", b"a")
        await nc.jetstream().publish("beta.echo", b"b")
        await eventually(lambda: len(functions.completed["echo"]) == 2)
    ids = functions.calls["echo"]
    assert len(set(ids)) == 2 and {i.split("-1-")[0] for i in ids} == {"alpha", "beta"}
    records = [await status_record(nc, i, "alpha", "beta") for i in ids]
    assert sorted(r["queue"] for r in records if r) == ["alpha", "beta"]
    assert all(r and r["state"] == "succeeded" for r in records)
    await nc.close()


async def test_a_call_older_than_max_event_age_is_not_invoked(nats_server, functions, callbacks):
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_event_age=5.0)):
        old = time.time_ns() - 10 * 10**9  # started ten seconds ago
        call_id = await enqueue(nc, "echo", b"stale", callback_url=callbacks.url, start_time_ns=old)
        fresh = await enqueue(nc, "echo", b"fresh")
        await eventually(lambda: len(callbacks.received) == 1)
        await eventually(lambda: functions.completed["echo"] == [fresh])
        assert (await status_record(nc, call_id) or {})["state"] == "expired"
    headers, _ = callbacks.received[0]
    assert headers["X-Call-Status"] == "expired" and headers["X-Call-Id"] == call_id
    [letter] = await dead_letters(nc)
    assert letter.headers[contract.H_DLQ_REASON] == "expired" and letter.data == b"stale"
    await nc.close()


async def test_no_retry_starts_past_max_event_age(nats_server, functions):
    async def failing(request, server):
        return web.Response(status=500)

    functions.handlers["failing"] = failing
    nc = await connect(nats_server.url)
    s = worker_settings(nats_server.url, functions.url_template, initial_retry_wait=1.0, max_event_age=2.5)
    async with running_worker(s):
        await enqueue(nc, "failing")
        await eventually(lambda: len(functions.calls["failing"]) >= 1)
        for _ in range(200):
            if (await nc.jetstream().stream_info(contract.dlq_stream_name(contract.DEFAULT_QUEUE))).state.messages:
                break
            await asyncio.sleep(0.05)
    # attempts at about 0 s and 1 s; a third would start at 3 s, past 2.5 s: dead-lettered instead
    assert len(functions.calls["failing"]) == 2
    [letter] = await dead_letters(nc)
    assert letter.headers[contract.H_DLQ_REASON] == "expired"
    await nc.close()


async def test_a_call_without_a_start_time_ages_from_when_it_was_stored(nats_server, functions):
    """A bare `nats pub` carries no X-Start-Time: its age counts from its storage, not from each delivery (it
    used to look new on every attempt, so it never expired)."""

    async def failing(request, server):
        return web.Response(status=500)

    functions.handlers["failing"] = failing
    nc = await connect(nats_server.url)
    s = worker_settings(nats_server.url, functions.url_template, initial_retry_wait=0.3, max_retry_wait=0.3)
    s.max_event_age = 1.5
    s.max_retry_attempts = 100
    async with running_worker(s):
        await nc.jetstream().publish(contract.subject(contract.DEFAULT_QUEUE, "failing"), b"bare")
        for _ in range(300):
            if (await nc.jetstream().stream_info(contract.dlq_stream_name(contract.DEFAULT_QUEUE))).state.messages:
                break
            await asyncio.sleep(0.05)
    [letter] = await dead_letters(nc)
    assert letter.headers[contract.H_DLQ_REASON] == "expired"
    assert len(functions.calls["failing"]) < 10
    await nc.close()
