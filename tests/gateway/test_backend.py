"""backend.py: PubAcks, the gateway's publish-and-wait-for-the-PubAck, answers as js.publish did."""

from __future__ import annotations

import asyncio

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError

from jetqueue import provision
from jetqueue.contract import jetstream
from jetqueue.gateway.backend import PubAcks
from tests.helpers import connect


async def test_stored_duplicate_refused_missing_and_unanswered(nats_server):
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await provision.ensure_stream(js, jetstream.work_stream("q", 1, "file", max_length=1))
        acks = await PubAcks.open(nc)
        assert await acks.publish("q.f", b"a", {"Nats-Msg-Id": "one"}, 5) is False
        assert await acks.publish("q.f", b"a", {"Nats-Msg-Id": "one"}, 5) is True  # the duplicate window
        with pytest.raises(APIError) as refused:  # the stream holds one message and discards new ones
            await acks.publish("q.f", b"b", {"Nats-Msg-Id": "two"}, 5)
        assert refused.value.err_code == jetstream.QUEUE_FULL
        with pytest.raises(NoStreamResponseError):  # no stream has the subject: no responders
            await acks.publish("nowhere.f", b"c", {"Nats-Msg-Id": "three"}, 5)
        with pytest.raises(NatsTimeoutError):  # gives up before any PubAck can arrive
            await acks.publish("q.f", b"d", {"Nats-Msg-Id": "four"}, 1e-6)
        assert (await js.stream_info("OF_q")).state.messages == 1
        await asyncio.sleep(0.2)  # the late PubAck of the timed-out publish finds no one waiting
        assert not acks._waiting
    finally:
        await nc.close()


async def test_publishes_in_flight_get_their_own_answers(nats_server):
    nc = await connect(nats_server.url)
    try:
        await provision.ensure_stream(nc.jetstream(), jetstream.work_stream("q", 1, "file"))
        acks = await PubAcks.open(nc)
        ids = [f"c{i % 50}" for i in range(100)]  # each id twice: the second of each is the duplicate
        duplicates = await asyncio.gather(*(acks.publish("q.f", b"x", {"Nats-Msg-Id": i}, 5) for i in ids))
        assert duplicates == [False] * 50 + [True] * 50
        assert not acks._waiting
    finally:
        await nc.close()


async def test_a_puback_that_merely_mentions_duplicate_is_read_in_full(nats_server):
    nc = await connect(nats_server.url)
    try:
        await provision.ensure_stream(nc.jetstream(), jetstream.work_stream("duplicate", 1, "file"))
        acks = await PubAcks.open(nc)  # {"stream":"OF_duplicate","seq":1}: not a duplicate
        assert await acks.publish("duplicate.f", b"a", {"Nats-Msg-Id": "one"}, 5) is False
        assert await acks.publish("duplicate.f", b"a", {"Nats-Msg-Id": "one"}, 5) is True
    finally:
        await nc.close()


async def test_an_answer_that_is_not_a_puback_is_no_202(nats_server):
    """A stray core-NATS responder on a subject no stream holds: its answer must not read as "stored"."""
    nc = await connect(nats_server.url)
    try:

        async def stray(msg):
            await msg.respond(b"")

        await nc.subscribe("stray.f", cb=stray)
        acks = await PubAcks.open(nc)
        with pytest.raises(NatsTimeoutError):  # answered 503 "may or may not be stored", never 202
            await acks.publish("stray.f", b"a", {"Nats-Msg-Id": "x"}, 5)
    finally:
        await nc.close()


async def test_unanswered_publishes_time_out_by_the_sweep_and_a_shorter_timeout_by_its_own_timer(nats_server):
    """Deadlines are swept in the order they fall: one that falls before those already waiting (a shorter
    timeout) is not kept waiting behind them."""
    nc = await connect(nats_server.url)
    try:

        async def silent(msg):
            return None

        await nc.subscribe("silent.f", cb=silent)
        acks = await PubAcks.open(nc)
        with pytest.raises(NatsTimeoutError):  # nobody else waiting: the sweep times it out
            await acks.publish("silent.f", b"a", {"Nats-Msg-Id": "first"}, 0.3)
        long = asyncio.ensure_future(acks.publish("silent.f", b"b", {"Nats-Msg-Id": "long"}, 60))
        await asyncio.sleep(0.05)
        with pytest.raises(NatsTimeoutError):  # its deadline falls before the long one's: not kept behind it
            await acks.publish("silent.f", b"c", {"Nats-Msg-Id": "short"}, 0.3)
        assert not long.done()
        long.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long
        assert not acks._waiting
    finally:
        await nc.close()
