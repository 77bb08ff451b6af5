"""deadletter.py: a dead letter is stored before its call is terminated, and always fits max_payload."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from jetqueue import contract
from jetqueue.gateway.accept import DEAD_LETTER_ROOM
from jetqueue.queueworker.deadletter import fit
from tests.helpers import connect, dead_letters, enqueue, running_worker, worker_settings
from tests.servers import eventually

LIMIT = 1024 * 1024


def test_fit_cuts_what_jetqueue_adds_first():
    headers = {contract.H_DLQ_ERROR: "e" * 900, contract.H_DLQ_SUBJECT: "q.f", contract.H_FORWARD + "A": "a" * 50}
    body = b"x" * (LIMIT - contract.header_size(headers) + 100)
    fitted, kept = fit(dict(headers), body, LIMIT)
    assert kept == body and fitted[contract.H_FORWARD + "A"] == "a" * 50
    assert len(fitted[contract.H_DLQ_ERROR]) < 900 and fitted[contract.H_DLQ_TRUNCATED] == "error"
    assert contract.header_size(fitted) + len(kept) <= LIMIT


def test_fit_drops_forwarded_headers_then_body_tail_only_when_it_must():
    headers = {contract.H_DLQ_ERROR: "e", contract.H_FORWARD + "Big": "b" * 4000}
    fitted, kept = fit(dict(headers), b"x" * (LIMIT - 200), LIMIT)
    assert contract.H_FORWARD + "Big" not in fitted and len(kept) == LIMIT - 200
    assert contract.header_size(fitted) + len(kept) <= LIMIT
    fitted, kept = fit({contract.H_DLQ_REASON: "rejected"}, b"x" * LIMIT, LIMIT)
    assert fitted[contract.H_DLQ_TRUNCATED].endswith("body") and contract.header_size(fitted) + len(kept) <= LIMIT


@pytest.mark.parametrize(
    ("room", "truncated"),
    [(0, "error,headers"), (DEAD_LETTER_ROOM, None)],  # published at the limit; as the gateway allows
)
async def test_a_call_at_the_size_limit_is_dead_lettered_without_losing_the_connection(
    nats_server, functions, room, truncated
):
    async def reject(request, server):
        return web.Response(status=400, text="no " * 400)  # a long error text for the dead letter

    functions.handlers["reject"] = reject
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    headers = {contract.H_CALL_ID: "big", contract.H_FORWARD + "X-Pad": "p" * 300}
    body = b"y" * (nc.max_payload - contract.header_size(headers) - room)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)) as w:
        await js.publish("faas-request.reject", body, headers=headers)
        await js.publish("faas-request.echo", b"after", headers={contract.H_CALL_ID: "after"})
        await eventually(lambda: functions.completed["echo"] == ["after"], timeout=30)
        assert functions.calls["reject"] == ["big"]  # once: the dead letter was stored the first time
        assert w.metrics.reconnects._value.get() == 0
    (dl,) = await dead_letters(nc)
    assert dl.data == body and dl.headers[contract.H_DLQ_REASON] == "rejected"
    assert dl.headers.get(contract.H_DLQ_TRUNCATED) == truncated
    assert (contract.H_FORWARD + "X-Pad" in dl.headers) == (room > 0)  # the caller's headers survive the reserve
    await nc.close()


@pytest.mark.parametrize("keep", [False, True])
async def test_credentials_are_redacted_in_dead_letters_unless_kept(nats_server, functions, keep):
    async def reject(request, server):
        return web.Response(status=400)

    functions.handlers["reject"] = reject
    nc = await connect(nats_server.url)
    secrets = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "Proxy-Token": "p", "X-Plain": "kept"}
    settings = worker_settings(nats_server.url, functions.url_template, dead_letter_credentials=keep)
    async with running_worker(settings):
        await enqueue(nc, "reject", headers=secrets)
        await eventually(lambda: len(functions.calls["reject"]) == 1)
        await eventually_dead_letters(nc, 1)
    (dl,) = await dead_letters(nc)
    stored = {k[len(contract.H_FORWARD) :]: v for k, v in dl.headers.items() if k.startswith(contract.H_FORWARD)}
    assert stored["X-Plain"] == "kept"
    for name in ("Authorization", "Cookie", "Proxy-Token"):
        assert stored[name] == (secrets[name] if keep else "[redacted]")
    assert functions.requests[0]["headers"]["Authorization"] == "Bearer s3cret"  # the function still got them
    await nc.close()


async def eventually_dead_letters(nc, n: int) -> None:
    import asyncio

    for _ in range(100):
        if len(await dead_letters(nc)) >= n:
            return
        await asyncio.sleep(0.1)


async def test_dead_letters_survive_a_stream_reset_and_publish_headers(nats_server, functions, callbacks):
    """After `jetqueue reset` the new stream counts from 1 again: the next call's dead letter and callback must
    not be taken for the old ones' duplicates. A Nats-Expected-Stream header on the original publish must not
    make the dead letter itself be refused (it would be redelivered and run for ever)."""

    async def reject(request, server):
        return web.Response(status=400)

    functions.handlers["reject"] = reject
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await enqueue(nc, "reject", b"A", call_id="A", callback_url=callbacks.url)
        await eventually(lambda: len(callbacks.received) == 1)
        await js.delete_stream("OF_faas-request")  # jetqueue reset
        for _ in range(100):
            try:
                await js.publish(
                    "faas-request.reject",
                    b"B",
                    headers={
                        contract.H_CALL_ID: "B",
                        contract.H_CALLBACK: callbacks.url,
                        "Nats-Expected-Stream": "OF_faas-request",
                    },
                )
                break
            except Exception:
                await asyncio.sleep(0.1)  # until the worker has set the stream up again
        await eventually(lambda: len(callbacks.received) == 2, timeout=30)
        await asyncio.sleep(1)
    assert [h["X-Call-Id"] for h, _ in callbacks.received] == ["A", "B"]
    assert functions.calls["reject"] == ["A", "B"]  # B ran once: its dead letter was stored the first time
    assert sorted(d.data for d in await dead_letters(nc)) == [b"A", b"B"]
    await nc.close()
