"""callbacks.py: callbacks are stored before the ack and delivered with retries, per receiver, safely."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from jetqueue import contract
from jetqueue.egress import Egress
from jetqueue.queueworker.callbacks import H_TRUNCATED, H_URL, CallbackSender, CallbackStore, busy_wait
from jetqueue.queueworker.metrics import WorkerMetrics
from tests.helpers import connect, dead_letters, enqueue, running_worker, start_worker, worker_env, worker_settings
from tests.servers import CallbackReceiver, eventually, free_port


async def callback_dead_letters(nc):
    return [d for d in await dead_letters(nc) if d.subject.endswith("." + contract.CALLBACK_DLQ_FUNCTION)]


async def test_callback_receiver_down_then_back(nats_server, functions, callbacks):
    callbacks.status = 503
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await enqueue(nc, "echo", callback_url=callbacks.url)
        await eventually(lambda: callbacks.refused >= 1, timeout=30)  # tried while down
        callbacks.status = 200
        await eventually(lambda: len(callbacks.received) == 1)
    await nc.close()


async def test_a_hanging_receiver_delays_nobody_else(nats_server, functions, callbacks):
    """40 callbacks to a receiver that accepts and never answers; 5 to a healthy one arrive meanwhile."""
    hung: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    nc = await connect(nats_server.url)
    try:
        async with running_worker(worker_settings(nats_server.url, functions.url_template, callback_timeout=60.0)):
            for _ in range(40):
                await enqueue(nc, "echo", callback_url=f"http://127.0.0.1:{port}/cb")
            await eventually(lambda: len(hung) >= 4)  # the hanging receiver has its share, and no more
            for _ in range(5):
                await enqueue(nc, "echo", callback_url=callbacks.url)
            await eventually(lambda: len(callbacks.received) == 5, timeout=50)  # inside one 60 s timeout
            assert len(hung) <= 4
    finally:
        for w in hung:
            w.close()
        server.close()
        await nc.close()


async def test_redirects_are_not_followed(nats_server, functions, callbacks):
    target = await CallbackReceiver().start()
    callbacks.status, callbacks.headers = 307, {"Location": target.url}
    nc = await connect(nats_server.url)
    try:
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await enqueue(nc, "echo", callback_url=callbacks.url, call_id="redirected")
            await eventually(lambda: len(functions.completed["echo"]) == 1)
            await asyncio.sleep(1)
        assert target.received == []
        (dl,) = await callback_dead_letters(nc)
        assert dl.headers[contract.H_DLQ_REASON] == "redirected" and dl.headers[H_URL] == callbacks.url
    finally:
        await target.stop()
        await nc.close()


async def test_the_worker_enforces_the_allow_list_and_blocked_networks(nats_server, functions, callbacks):
    """Calls published straight to NATS never met the gateway's checks; a host name that resolves to a blocked
    address is refused on the address actually connected to."""
    nc = await connect(nats_server.url)
    settings = worker_settings(
        nats_server.url,
        functions.url_template,
        callback_hosts="127.0.0.1,localhost",
        callback_blocked_networks="127.0.0.0/8",
    )
    async with running_worker(settings):
        await enqueue(nc, "echo", call_id="other-host", callback_url="http://elsewhere.invalid/cb")
        await enqueue(nc, "echo", call_id="by-name", callback_url=f"http://localhost:{callbacks.port}/cb")
        await eventually(lambda: len(functions.completed["echo"]) == 2)
        for _ in range(150):
            if len(await callback_dead_letters(nc)) == 2:
                break
            await asyncio.sleep(0.1)
    refused = {d.headers["X-Call-Id"]: d.headers for d in await callback_dead_letters(nc)}
    assert set(refused) == {"other-host", "by-name"}
    assert all(h[contract.H_DLQ_REASON] == "refused" for h in refused.values())
    assert "blocked network" in refused["by-name"][contract.H_DLQ_ERROR]
    assert callbacks.received == []
    await nc.close()


async def test_a_worker_killed_after_the_ack_loses_no_callback(nats_server, functions, callbacks, tmp_path):
    """Calls finish (acked) while the receiver is down; the worker is killed -9; the next worker delivers every
    stored callback. At least once, as docs/callbacks.md promises: the next worker sends each callback once, and
    a second copy exists only where a POST of the killed worker reached the receiver and it died before it could
    act on the answer (this receiver turns 2xx when the worker is gone: a request still in its socket is taken)."""
    callbacks.status = 503
    nc = await connect(nats_server.url)
    # A callback the killed worker held comes back after the callback consumer's ack wait (timeout + 30 s).
    env = worker_env(nats_server.url, functions.url_template, callback_timeout="2s")
    log = tmp_path / "w.log"
    # Each worker signs with a key of its own: the key id in X-Jetqueue-Signature names who sent a callback.
    first = start_worker({**env, "JETQUEUE_CALLBACK_SIGNING_KEYS": "killed:" + "k" * 16}, log)
    await eventually(lambda: b"worker ready" in log.read_bytes(), timeout=30)
    ids = [await enqueue(nc, "echo", callback_url=callbacks.url) for _ in range(20)]
    await eventually(lambda: set(ids) <= set(functions.completed["echo"]), timeout=30)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    callbacks.status = 200
    second = start_worker({**env, "JETQUEUE_CALLBACK_SIGNING_KEYS": "second:" + "s" * 16}, log)
    try:
        with contextlib.suppress(AssertionError):  # counted below
            await eventually(lambda: set(ids) <= set(callbacks.by_call()), timeout=120)
        await asyncio.sleep(1)
        counts = callbacks.tally("kill -9 after the ack", ids)
        senders = {i: [signer(h) for h in callbacks.by_call()[i]] for i in ids}
        for i, by in senders.items():
            if len(by) != 1:
                print(f"  {i}: sent by {by}")
        assert counts[0] == 0, "callbacks lost"
        assert all(by.count("second") <= 1 and len(by) <= 2 for by in senders.values()), senders
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        await nc.close()


def signer(headers: dict[str, str]) -> str:
    """The key id a callback was signed with (t=...,<id>=<hmac>)."""
    return headers.get("X-Jetqueue-Signature", "").split(",")[-1].partition("=")[0]


async def test_a_callback_handed_on_whose_ack_was_lost_is_sent_once(nats_server, functions, callbacks):
    """A handler stores a failed callback's next attempt and dies before its ack arrives: the message comes
    back, and must not be sent beside the next attempt."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(settings):  # sets up the callbacks stream and consumer
        pass
    await CallbackStore(js, settings.queue, nc.max_payload).store("k1", callbacks.url, b"done", {"X-Call-Id": "c1"})
    psub = await js.pull_subscribe_bind(
        contract.callback_durable_name(settings.queue), contract.callback_stream_name(settings.queue)
    )
    (msg,) = await psub.fetch(1, timeout=5)
    sender = CallbackSender(js, settings.queue, WorkerMetrics(), Egress.parse("", ""), nc.max_payload)

    async def lost() -> None:
        pass

    msg.ack = lost  # type: ignore[method-assign]
    await sender._later(msg, dict(msg.headers or {}), 2, 1.0)
    await sender.close(1)
    await msg.nak()  # as if its ack wait ran out
    await psub.unsubscribe()
    async with running_worker(settings):
        await eventually(lambda: len(callbacks.received) == 1)
        await asyncio.sleep(2.5)  # the stored next attempt is due after 1 s
    assert len(callbacks.received) == 1
    await nc.close()


async def test_a_callback_cut_to_fit_can_be_handed_on(nats_server, functions, callbacks):
    """A body cut to the server's limit must leave room for the headers of its later attempts: over the limit,
    nats-server closes the worker's connection, every time the callback comes back."""

    async def big(request: web.Request, _: object) -> web.Response:
        return web.Response(body=b"x" * (2 * 1024 * 1024))

    functions.handlers["big"] = big
    callbacks.status = 503
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        await enqueue(nc, "big", call_id="huge", callback_url=callbacks.url)
        await eventually(lambda: functions.completed["big"] == ["huge"])
        await eventually(lambda: callbacks.refused >= 1, timeout=30)  # its first attempt failed: handed on
        callbacks.status = 200
        await eventually(lambda: len(callbacks.received) == 1, timeout=20)
    headers, body = callbacks.received[0]
    assert headers[H_TRUNCATED] == str(2 * 1024 * 1024) and 0 < len(body) < 1024 * 1024
    await nc.close()


async def test_a_callback_dead_lettered_whose_ack_was_lost_has_one_dead_letter(nats_server, functions, callbacks):
    """A handler dead-letters a callback and dies before its ack arrives: it comes back, is handed on and
    fails again, and its dead letter is not stored twice."""
    callbacks.status = 500
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template, callback_attempts=1)
    async with running_worker(settings):
        pass
    await CallbackStore(js, settings.queue, nc.max_payload).store("k2", callbacks.url, b"done", {"X-Call-Id": "c2"})
    psub = await js.pull_subscribe_bind(
        contract.callback_durable_name(settings.queue), contract.callback_stream_name(settings.queue)
    )
    (msg,) = await psub.fetch(1, timeout=5)
    sender = CallbackSender(js, settings.queue, WorkerMetrics(), Egress.parse("", ""), nc.max_payload, attempts=1)

    async def lost() -> None:
        pass

    msg.ack = lost  # type: ignore[method-assign]
    await sender._give_up(msg, dict(msg.headers or {}), "exhausted", "HTTP 500", 1)
    await sender.close(1)
    await msg.nak()  # as if its ack wait ran out
    await psub.unsubscribe()
    async with running_worker(settings):
        stream = await js.stream_info(contract.callback_stream_name(settings.queue))
        for _ in range(100):  # handed on, due after 1 s, tried once more and dead-lettered again
            await asyncio.sleep(0.1)
            stream = await js.stream_info(contract.callback_stream_name(settings.queue))
            if stream.state.last_seq >= 3 and stream.state.messages == 0:
                break
        await asyncio.sleep(0.5)
    assert stream.state.last_seq >= 3 and stream.state.messages == 0
    assert len(await callback_dead_letters(nc)) == 1
    await nc.close()


def test_a_receiver_that_does_not_answer_is_asked_again_less_and_less_often():
    for busy, base in ((0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)):
        waits = [busy_wait(busy, 300.0) for _ in range(200)]
        assert base <= min(waits) and max(waits) <= 2 * base and len(set(waits)) > 1  # spread, not a wave
    assert busy_wait(100, 300.0) == 300.0


async def test_a_slow_receiver_with_a_backlog_gets_it_at_its_pace(nats_server, functions):
    """A receiver that answers in 0.5 s, 4 at a time, takes 40 callbacks in about 5 s: those that find it
    busy are offered again within seconds, not after doubling waits."""
    receiver = CallbackReceiver()

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        receiver.received.append((dict(request.headers), await request.read()))
        return web.Response()

    app = web.Application()
    app.router.add_post("/cb", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    nc = await connect(nats_server.url)
    try:
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            for _ in range(40):
                await enqueue(nc, "echo", callback_url=f"http://127.0.0.1:{port}/cb")
            await eventually(lambda: len(receiver.received) == 40, timeout=60)
    finally:
        await runner.cleanup()
        await nc.close()


async def test_a_callback_out_of_attempts_becomes_a_dead_letter(nats_server, functions, callbacks):
    """Attempt 2 is fired by a message schedule and carries its marks; its dead letter must still be stored."""
    callbacks.status = 500
    nc = await connect(nats_server.url)
    async with running_worker(worker_settings(nats_server.url, functions.url_template, callback_attempts=2)):
        await enqueue(nc, "echo", call_id="never-delivered", callback_url=callbacks.url)
        for _ in range(200):
            if await callback_dead_letters(nc):
                break
            await asyncio.sleep(0.1)
    (dl,) = await callback_dead_letters(nc)
    assert dl.headers[contract.H_DLQ_REASON] == "exhausted" and dl.headers["X-Call-Id"] == "never-delivered"
    assert not any(k.startswith("Nats-Schedule") for k in dl.headers)
    await nc.close()


async def test_a_callback_consumer_set_up_again_leaves_no_pull_subscription_behind(nats_server, functions):
    """The sender's old pull subscription is never read again: a late answer to one of its pulls waited in it,
    and the connection's drain at shutdown waited for it until nats-py's drain timeout (30 s; a multi-host run
    SIGKILLed the worker 10 s after SIGTERM)."""
    nc = await connect(nats_server.url)
    settings = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(settings) as w:
        assert w.callbacks is not None and w.nc is not None
        old = w.callbacks._psub
        assert old is not None
        await nc.jetstream().delete_consumer(
            contract.callback_stream_name(settings.queue), contract.callback_durable_name(settings.queue)
        )
        await eventually(lambda: w.callbacks is not None and w.callbacks._psub is not old, timeout=30)
        assert old._sub._id not in w.nc._subs
    await nc.close()


async def test_closing_the_sender_ends_its_loop_while_it_sets_its_consumer_up_again(nats_server):
    """Setting the consumer up again waits on NATS (5 s per request, 2 s between tries): the worker's stop
    must not wait for it (it held a multi-host run's stop for 6 s)."""
    nc = await connect(nats_server.url)

    class Gone:  # a pull subscription whose consumer is gone
        async def fetch(self, batch: int, timeout: float) -> list[object]:
            raise NotFoundError

        async def unsubscribe(self) -> None:
            pass

    async def unanswered() -> JetStreamContext.PullSubscription:
        await asyncio.Event().wait()  # NATS does not answer
        raise AssertionError

    sender = CallbackSender(nc.jetstream(), "q", WorkerMetrics(), Egress.parse("", ""), nc.max_payload)
    sender.bind(Gone(), unanswered)  # type: ignore[arg-type]
    run = asyncio.create_task(sender.run())
    await asyncio.sleep(0.5)  # the fetch failed: it is setting the consumer up again
    await sender.close(timeout=1.0)
    await asyncio.wait([run], timeout=5)
    assert run.done()
    await nc.close()
