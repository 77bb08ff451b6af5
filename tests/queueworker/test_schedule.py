"""schedule.py: retries that wait hold nothing, keep their attempt count, and due calls wait out a full queue."""

from __future__ import annotations

import asyncio

from aiohttp import web

from jetqueue import contract
from jetqueue.contract import jetstream
from jetqueue.queueworker.fetch import ConsumerLoop, Slots
from jetqueue.queueworker.schedule import Mover
from tests.helpers import connect, enqueue, running_worker, status_record, worker_settings
from tests.servers import eventually

Q = contract.DEFAULT_QUEUE


async def held(nc) -> int:
    info = await nc.jetstream().stream_info(contract.schedule_stream_name(Q), subjects_filter=contract.held_subjects(Q))
    return sum((info.state.subjects or {}).values())


async def test_a_long_retry_wait_holds_no_slot(nats_server, functions):
    """Ten calls told to come back in an hour must not stop the other functions of a shared static queue: with
    NAK delays they held every pending slot (max_ack_pending 2) for the hour."""

    async def busy(request, server):
        return web.Response(status=429, headers={"Retry-After": "3600"})

    functions.handlers["busy"] = busy
    nc = await connect(nats_server.url)
    s = worker_settings(
        nats_server.url, functions.url_template, max_inflight=2, max_ack_pending=2, max_retry_after=3600.0
    )
    async with running_worker(s):
        busy_ids = [await enqueue(nc, "busy") for _ in range(10)]
        echo_ids = [await enqueue(nc, "echo") for _ in range(5)]
        await eventually(lambda: sorted(functions.completed["echo"]) == sorted(echo_ids))
        await eventually(lambda: len(functions.calls["busy"]) == 10)
        for _ in range(200):
            if await held(nc) == 10:
                break
            await asyncio.sleep(0.05)
        assert await held(nc) == 10  # every busy call waits as a schedule, none in the consumer
        rec = await status_record(nc, busy_ids[0], Q)
        assert rec is not None
        assert rec["state"] == "retrying" and rec["next_try"] - rec["updated_at"] > 3000
        info = await nc.jetstream().consumer_info(contract.stream_name(Q), contract.durable_name(Q))
        assert info.num_ack_pending == 0
    await nc.close()


async def test_a_held_retry_keeps_its_attempt_count(nats_server, functions, callbacks):
    state = {"n": 0}

    async def twice(request, server):
        state["n"] += 1
        return web.Response(status=500 if state["n"] <= 2 else 200, text=f"attempt {state['n']}")

    functions.handlers["twice"] = twice
    nc = await connect(nats_server.url)
    s = worker_settings(nats_server.url, functions.url_template, initial_retry_wait=2.0, max_retry_wait=2.0)
    async with running_worker(s):
        call_id = await enqueue(nc, "twice", b"payload", callback_url=callbacks.url, headers={"X-Custom": "kept"})
        await eventually(lambda: len(callbacks.received) == 1, timeout=60)
    t = functions.times["twice"]
    assert functions.calls["twice"] == [call_id] * 3
    assert t[1] - t[0] >= 1.9 and t[2] - t[1] >= 1.9  # held, never released early
    headers, body = callbacks.received[0]
    assert headers["X-Retry"] == "2" and headers["X-Function-Status"] == "200" and body == b"attempt 3"
    last = functions.requests[-1]
    assert last["body"] == b"payload" and last["headers"]["X-Custom"] == "kept"  # the call itself, unchanged
    await nc.close()


async def test_a_due_call_waits_while_the_queue_is_full(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    work = jetstream.work_stream(Q, max_length=1)
    await js.add_stream(work.to_nats())
    await js.add_stream(jetstream.schedule_stream(Q).to_nats())
    await js.add_consumer(contract.schedule_stream_name(Q), jetstream.due_consumer(Q, 16).to_nats())
    blocker = await enqueue(nc, "echo", b"first")  # the queue is full
    call = contract.Call(call_id="due-1", queue=Q, function="echo", body=b"second", not_before=1.0)
    subject, headers = contract.held_message(call, call.to_headers(), 0.0, "due-1")  # due at once
    await js.publish(subject, b"second", headers=headers)
    psub = await js.pull_subscribe_bind(durable=contract.due_durable_name(Q), stream=contract.schedule_stream_name(Q))
    mover = Mover(js, Q)
    loop = ConsumerLoop("due", psub, Slots(4), mover)
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(3)  # offered, refused (queue full), offered again: still held
        assert (await js.stream_info(contract.stream_name(Q))).state.messages == 1
        assert (await js.stream_info(contract.schedule_stream_name(Q))).state.messages == 1
        await js.purge_stream(contract.stream_name(Q))  # room again
        for _ in range(200):
            if (await js.stream_info(contract.stream_name(Q))).state.messages == 1:
                break
            await asyncio.sleep(0.05)
        msg = await js.get_last_msg(contract.stream_name(Q), contract.subject(Q, "echo"))
        assert msg.data == b"second" and msg.headers and msg.headers[contract.H_CALL_ID] == "due-1"
        assert not any(k.startswith("Nats-Schedule") for k in msg.headers)
        for _ in range(100):
            if (await js.stream_info(contract.schedule_stream_name(Q))).state.messages == 0:
                break
            await asyncio.sleep(0.05)
        assert (await js.stream_info(contract.schedule_stream_name(Q))).state.messages == 0  # moved exactly once
    finally:
        loop.stopping = True
        await task
        await psub.unsubscribe()
        await nc.close()
    assert blocker
