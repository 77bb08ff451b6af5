"""sharedconsumer.py: the server facts its design rests on (nats-server 2.15), and its states as a worker learns
them."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from jetqueue import contract, provision
from jetqueue.contract import jetstream
from jetqueue.queueworker.pullrequests import Message, Requests
from jetqueue.queueworker.sharedconsumer import Shared, State
from tests.helpers import connect, enqueue, worker_settings
from tests.servers import eventually

QUEUE = "q"
STREAM = contract.stream_name(QUEUE)


async def api(nc, subject: str, body: dict[str, object] | None = None) -> Any:
    answer = await nc.request(f"$JS.API.{subject}", json.dumps(body).encode() if body else b"", timeout=5)
    return json.loads(answer.data)


async def pull(nc, consumer: str, batch: int = 10) -> Any:
    psub = await nc.jetstream().pull_subscribe_bind(durable=consumer, stream=STREAM)
    try:
        return await psub.fetch(batch, timeout=0.5)
    except TimeoutError:
        return []
    finally:
        await psub.unsubscribe()


def spec(closed: bool) -> dict[str, object]:
    config = jetstream.shared_function_consumer(QUEUE, 30.0, 100, 16, closed).to_nats().as_dict()
    return {"stream_name": STREAM, "config": config}


async def test_the_server_facts_the_hand_over_rests_on(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream(QUEUE))
    for function in ("a", "b", "a"):
        await enqueue(nc, function, queue=QUEUE)
    shared = contract.shared_consumer_name(QUEUE)
    assert "error" not in await api(nc, f"CONSUMER.CREATE.{STREAM}.{shared}", {**spec(False), "action": "create"})
    first = await pull(nc, shared, 1)  # a's first call, delivered
    closed = await api(nc, f"CONSUMER.CREATE.{STREAM}.{shared}", {**spec(True), "action": "update"})
    assert closed["delivered"]["stream_seq"] == 1
    assert await pull(nc, shared) == []  # closed: nothing new
    await first[0].nak()
    again = await pull(nc, shared)
    assert [m.metadata.sequence.stream for m in again] == [1]  # still its own
    # Why the hand-over: a's own consumer made now would deliver a's call the shared consumer holds.
    own = jetstream.function_consumer(QUEUE, "a", 30.0, 100, 16, 60.0)
    await provision.ensure_consumer(js, own)
    assert [m.metadata.sequence.stream for m in await pull(nc, own.durable)] == [1, 3]
    # The shared consumer is not made open while a function consumer exists, nor a function's next to it.
    await js.delete_consumer(STREAM, shared)
    refused = await api(nc, f"CONSUMER.CREATE.{STREAM}.{shared}", {**spec(False), "action": "create"})
    assert refused["error"]["err_code"] == 10100
    # Why never closed -> open in place: a widened filter skips the calls behind the consumer's position.
    await js.delete_consumer(STREAM, own.durable)
    foreign = ConsumerConfig(durable_name="g", filter_subject="q.a", ack_policy=AckPolicy.EXPLICIT)
    await js.add_consumer(STREAM, foreign)
    for m in await pull(nc, "g"):
        await m.ack()
    await enqueue(nc, "a", queue=QUEUE)
    await js.add_consumer(STREAM, replace(foreign, filter_subject=None, filter_subjects=["q.a", "q.b"]))
    assert [m.subject for m in await pull(nc, "g")] == ["q.a"]  # b's call is skipped
    await nc.close()


class Harness:
    """A Shared with its requests sent at once and its states recorded."""

    def __init__(self, nc) -> None:
        self.nc = nc
        self.requests = Requests(nc.jetstream(), orphan=lambda msg: None)
        self.states: list[State] = []
        self.tasks: set[asyncio.Task[None]] = set()
        s = worker_settings("nats://x", "http://x/{function}", queue=QUEUE, mode="function")
        self.shared = Shared(s, STREAM, self.requests, self.send, lambda sh: self.states.append(sh.state), lambda: None)

    def send(self, message: Message) -> None:
        subject, payload, reply = message
        task = asyncio.create_task(self.nc.publish(subject, payload, reply=reply))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def last(self) -> State:
        return self.states[-1]

    async def answered(self) -> None:
        await eventually(lambda: not self.shared.asking, timeout=5)


async def test_a_worker_learns_the_shared_consumer_s_states_and_when_the_hand_over_is_done(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream(QUEUE))
    h = Harness(nc)
    await h.requests.start()
    shared = h.shared
    shared.look()
    await h.answered()
    assert h.last() is State.ABSENT
    for _ in range(2):
        await enqueue(nc, "a", queue=QUEUE)
    shared.open()
    await h.answered()
    assert h.last() is State.OPEN and shared.handover is None
    held = await pull(nc, shared.name, 1)
    shared.close()
    await h.answered()
    assert h.last() is State.CLOSED and shared.pending == 1 and shared.handover == 1  # a call at 1 is pending
    await held[0].ack()
    await asyncio.sleep(0.1)
    shared.look()
    await h.answered()
    assert shared.pending == 0 and shared.handover is None  # nothing of it can be delivered twice now
    shared.remove()
    await h.answered()
    assert h.last() is State.ABSENT
    await provision.ensure_consumer(js, jetstream.function_consumer(QUEUE, "a", 30.0, 100, 16, 60.0))
    shared.open()
    await h.answered()
    assert h.last() is State.ABSENT and shared.not_before > asyncio.get_running_loop().time()  # tried later
    assert h.states == [State.ABSENT, State.OPEN, State.CLOSED, State.CLOSED, State.ABSENT, State.ABSENT]
    await h.requests.stop()
    await nc.close()
