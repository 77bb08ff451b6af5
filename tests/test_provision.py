"""provision.py: existing streams and consumers are adopted, or refused with what to change."""

from __future__ import annotations

from dataclasses import replace

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DiscardPolicy, RetentionPolicy, StreamConfig

from jetqueue import provision
from jetqueue.contract import jetstream
from jetqueue.provision import StreamSetupError
from jetqueue.queueworker.process import Worker
from tests.helpers import connect, enqueue, running_worker, worker_settings
from tests.servers import eventually


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
        assert w.processor is not None and w.processor.ctx.ack_wait == 30.0
    info = await js.consumer_info("OF_faas-request", "faas-request-workers")
    assert info.config.ack_wait == 30.0  # what the worker owns follows its settings
    await nc.close()


async def test_consumer_follows_the_settings_of_the_worker_that_starts(nats_server, functions):
    """Scale-out must not stay capped by the first worker's max_inflight."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    for inflight, ack_wait in ((5, 20.0), (100, 45.0)):
        settings = worker_settings(nats_server.url, functions.url_template, max_inflight=inflight, ack_wait=ack_wait)
        async with running_worker(settings):
            pass
        info = await js.consumer_info("OF_faas-request", "faas-request-workers")
        assert (info.config.max_ack_pending, info.config.ack_wait) == (2 * inflight, ack_wait)
    await nc.close()


async def test_what_cannot_change_in_place_is_refused_with_the_command(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_waiting=16)):
        pass
    with pytest.raises(StreamSetupError, match="nats consumer rm OF_faas-request faas-request-workers"):
        async with running_worker(worker_settings(nats_server.url, functions.url_template, max_waiting=512)):
            pass
    async with running_worker(worker_settings(nats_server.url, functions.url_template, max_waiting=8)):
        pass  # more waiting pulls allowed than asked for is harmless: kept, with a warning
    assert (await js.consumer_info("OF_faas-request", "faas-request-workers")).config.max_waiting == 16
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


@pytest.mark.parametrize(
    "limit", [{"max_msgs": 5}, {"max_bytes": 4096}, {"max_age": 3600.0}, {"max_msgs_per_subject": 2}]
)
async def test_a_stream_that_could_discard_accepted_calls_is_refused(nats_server, functions, limit):
    """A stream made by hand as the seeds describe (discard old) with a limit would delete stored calls."""
    nc = await connect(nats_server.url)
    await nc.jetstream().add_stream(
        StreamConfig(
            name="OF_faas-request",
            subjects=["faas-request.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            discard=DiscardPolicy.OLD,
            **limit,
        )
    )
    with pytest.raises(StreamSetupError, match="nats stream edit OF_faas-request --discard new"):
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            pass
    await nc.close()


async def test_streams_jetqueue_creates_discard_new(nats_server, functions):
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        pass
    nc = await connect(nats_server.url)
    info = await nc.jetstream().stream_info("OF_faas-request")
    assert info.config.discard == DiscardPolicy.NEW
    await nc.close()


async def test_queue_limits_follow_the_settings_and_a_full_queue_refuses(nats_server, functions):
    """maxQueueLength 3 then 5 on the same stream: applied in place, with discard new."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    for length in (3, 5):
        settings = worker_settings(nats_server.url, functions.url_template, max_queue_length=length)
        async with running_worker(settings):
            pass
        info = await js.stream_info("OF_faas-request")
        assert (info.config.max_msgs, info.config.discard) == (length, DiscardPolicy.NEW)
    for _ in range(5):
        await enqueue(nc, "echo")
    with pytest.raises(Exception, match="maximum messages exceeded"):
        await enqueue(nc, "echo")
    await nc.close()


async def test_a_new_consumer_starts_paused_and_an_update_never_lifts_a_pause(nats_server):
    """A worker restart re-applies consumer settings (create-or-update): the server keeps the pause."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    await provision.ensure_stream(js, jetstream.work_stream("q"))
    spec = jetstream.static_consumer("q", 30.0, 10, 16)
    await provision.ensure_consumer(js, spec, pause_until="2099-01-01T00:00:00Z")
    assert (await js.consumer_info("OF_q", "q-workers")).paused
    await provision.ensure_consumer(js, replace(spec, max_ack_pending=99, ack_wait=20.0))
    info = await js.consumer_info("OF_q", "q-workers")
    assert (info.config.max_ack_pending, info.config.ack_wait) == (99, 20.0)  # updated in place...
    assert info.paused and info.config.pause_until == "2099-01-01T00:00:00Z"  # ...and still paused
    await nc.close()
