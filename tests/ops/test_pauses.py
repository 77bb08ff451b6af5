"""ops/pauses.py: `jetqueue pause` and `resume` hold calls back and let them run again; TIME is read generously."""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from jetqueue import contract, pauses
from jetqueue.ops import pauses as ops
from jetqueue.ops.queues import OpsError
from tests.helpers import connect, consumer_back, enqueue, running_worker, worker_settings
from tests.servers import eventually

NOW = datetime(2026, 11, 23, 16, 0, 0, tzinfo=UTC)
QUEUE = contract.DEFAULT_QUEUE


@pytest.mark.parametrize(
    ("text", "after"),
    [
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        (" +15m ", timedelta(minutes=15)),
        ("in 2h", timedelta(hours=2)),
        ("2d", timedelta(days=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("600", timedelta(seconds=600)),
        ("2026-11-23T18:00:00Z", timedelta(hours=2)),
        ("2026-11-23t18:00:00z", timedelta(hours=2)),
        ("2026-11-23T19:00:00+01:00", timedelta(hours=2)),
        ("2026-11-23 18:00:00.123456789Z", timedelta(hours=2, microseconds=123456)),
        ("2026-11-24T00:00:00+00:00", timedelta(hours=8)),
    ],
)
def test_until_accepts_durations_and_times(text, after):
    assert ops.parse_until(text, NOW) == NOW + after


def test_until_without_a_zone_is_local_time():
    local = NOW.astimezone()
    tomorrow = (local + timedelta(days=1)).replace(tzinfo=None)
    assert ops.parse_until(tomorrow.isoformat(timespec="minutes"), NOW) == NOW + timedelta(days=1)
    assert ops.parse_until(tomorrow.date().isoformat(), NOW) == datetime.combine(
        tomorrow.date(), datetime.min.time()
    ).astimezone(UTC)
    in_an_hour = (local + timedelta(hours=1)).strftime("%H:%M")
    assert ops.parse_until(in_an_hour, NOW) == NOW + timedelta(hours=1)
    an_hour_ago = (local - timedelta(hours=1)).strftime("%H:%M:%S")  # the next one: tomorrow
    assert ops.parse_until(an_hour_ago, NOW) == NOW + timedelta(hours=23)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tomorrow", "neither a duration nor a time. Use a duration from now (90s"),
        ("25:00", "neither a duration nor a time"),
        ("2026-13-01", "neither a duration nor a time"),
        ("", "neither a duration nor a time"),
        ("0s", "has passed"),
        ("2026-11-23T15:00:00Z", "has passed: 2026-11-23T15:00:00Z is before now, 2026-11-23T16:00:00Z"),
        ("99999999h", "too far away; leave --until out to pause until resumed"),
    ],
)
def test_until_refuses_what_is_not_a_future_time_and_says_what_is_accepted(text, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        ops.parse_until(text, NOW)


async def pause(js, function: str = "", until: datetime | None = None) -> str:
    out = io.StringIO()
    assert await ops.pause(js, QUEUE, function, until, out) == 0
    return out.getvalue()


async def resume(js, function: str = "") -> str:
    out = io.StringIO()
    assert await ops.resume(js, QUEUE, function, out) == 0
    return out.getvalue()


async def test_static_pause_keeps_calls_until_resumed(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    settings = worker_settings(nats_server.url, functions.url_template)
    async with running_worker(settings):
        await enqueue(nc, "echo", call_id="before")
        await eventually(lambda: functions.completed["echo"] == ["before"])
        said = await pause(js)
        assert "paused queue faas-request until resumed" in said and "still accepted and kept" in said
        # The CLI pauses the consumer, or finds the worker (which follows the records) already did.
        assert "consumer faas-request-workers: paused until resumed" in said or "no consumer needed a change" in said
        assert (await js.consumer_info(contract.stream_name(QUEUE), contract.durable_name(QUEUE))).paused
        for i in range(3):
            await enqueue(nc, "echo", call_id=f"held-{i}")
        await asyncio.sleep(2.0)
        assert functions.calls["echo"] == ["before"]  # stored, not invoked
        assert (await js.stream_info(contract.stream_name(QUEUE))).state.messages == 3
        # Deleted underneath: the worker sets the consumer up again, paused.
        await js.delete_consumer(contract.stream_name(QUEUE), contract.durable_name(QUEUE))
        assert (await consumer_back(js, contract.stream_name(QUEUE), contract.durable_name(QUEUE))).paused
        await asyncio.sleep(1.0)
        assert functions.calls["echo"] == ["before"]
        assert "resumed queue faas-request" in await resume(js)
        await eventually(lambda: len(functions.completed["echo"]) == 4, timeout=60)
    await nc.close()


async def test_a_pause_with_an_end_lifts_by_itself(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        until = datetime.now(UTC) + timedelta(seconds=4)
        assert f"until {pauses.rfc3339(until)} (in " in await pause(js, until=until)
        await enqueue(nc, "echo", call_id="later")
        await asyncio.sleep(1.5)
        assert functions.calls["echo"] == []
        await eventually(lambda: functions.completed["echo"] == ["later"], timeout=20)
        assert datetime.now(UTC) >= until - timedelta(seconds=1)  # records and the server keep whole seconds
    await nc.close()


async def test_pause_works_with_no_worker_running_and_resume_says_what_still_holds(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    stream = contract.stream_name(QUEUE)
    shared = contract.shared_consumer_name(QUEUE)
    settings = worker_settings(nats_server.url, functions.url_template, mode="function")
    async with running_worker(settings):
        await enqueue(nc, "a")
        await enqueue(nc, "b")
        await eventually(lambda: len(functions.completed["a"]) == len(functions.completed["b"]) == 1)
        assert [c.name for c in await js.consumers_info(stream)] == [shared]  # every function's calls
        await pause(js, "c")
        await enqueue(nc, "a")
        await enqueue(nc, "b")  # a consumer each now, as while any function is paused
        await eventually(lambda: len(functions.completed["a"]) == len(functions.completed["b"]) == 2)
    await resume(js, "c")
    said = await pause(js, "a")  # no worker: the command pauses the consumer itself
    assert "paused function a of queue faas-request until resumed" in said
    assert (await js.consumer_info(stream, contract.function_consumer_name(QUEUE, "a"))).paused
    assert not (await js.consumer_info(stream, contract.function_consumer_name(QUEUE, "b"))).paused
    await pause(js)
    assert (await js.consumer_info(stream, contract.function_consumer_name(QUEUE, "b"))).paused
    said = await resume(js, "a")
    assert "resumed function a of queue faas-request" in said
    assert "the whole queue is still paused until resumed: `jetqueue resume faas-request`" in said
    assert (await js.consumer_info(stream, contract.function_consumer_name(QUEUE, "a"))).paused
    assert "faas-request-fn-a: resumed" in await resume(js)
    assert "queue faas-request was not paused" in await resume(js)
    await nc.close()


async def test_pausing_a_function_closes_the_shared_consumer_even_with_no_worker_running(nats_server, functions):
    """The shared consumer would hand the paused function's calls out with the others': the command closes it."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    stream = contract.stream_name(QUEUE)
    shared = contract.shared_consumer_name(QUEUE)
    settings = worker_settings(nats_server.url, functions.url_template, mode="function")
    async with running_worker(settings):
        await enqueue(nc, "a")
        await eventually(lambda: len(functions.completed["a"]) == 1)
    said = await pause(js, "a")
    assert f"consumer {shared}: closed to new calls" in said
    assert (await js.consumer_info(stream, shared)).config.filter_subject == contract.closed_subject(QUEUE)
    assert "no consumer needed a change" in await pause(js, "a")  # closed already
    await enqueue(nc, "a", call_id="held")
    await enqueue(nc, "b", call_id="free")
    async with running_worker(settings):
        await eventually(lambda: functions.completed["b"] == ["free"])
        await asyncio.sleep(1.0)
        assert len(functions.calls["a"]) == 1  # "held" waits
        await resume(js, "a")
        await eventually(lambda: functions.completed["a"][-1:] == ["held"], timeout=20)
    await nc.close()


async def test_refusals_name_the_way_out(nats_server, functions):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    with pytest.raises(OpsError, match="queue 'faas-request' has no stream OF_faas-request: nothing to pause"):
        await pause(js)
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        pass
    with pytest.raises(OpsError, match=r"static mode .* Pause the whole queue: jetqueue pause faas-request"):
        await pause(js, "echo")
    await nc.close()


async def test_the_commands(nats_server, functions):
    async with running_worker(worker_settings(nats_server.url, functions.url_template)):
        pass
    env = {"JETQUEUE_NATS_URL": nats_server.url, "PATH": ""}

    def run(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jetqueue", *a], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    paused = await asyncio.to_thread(run, "pause", QUEUE, "--until", "1h")
    assert paused.returncode == 0, paused.stderr
    assert "paused queue faas-request until 20" in paused.stdout and "(in 1h)" in paused.stdout
    status = await asyncio.to_thread(run, "status", QUEUE)
    assert "PAUSED" in status.stdout and "until 20" in status.stdout
    bad = await asyncio.to_thread(run, "pause", QUEUE, "--until", "soon")
    assert bad.returncode == 2 and "argument --until: 'soon' is neither a duration nor a time" in bad.stderr
    static = await asyncio.to_thread(run, "pause", QUEUE, "--function", "echo")
    assert static.returncode == 1 and "runs in static mode" in static.stderr
    resumed = await asyncio.to_thread(run, "resume", QUEUE)
    assert resumed.returncode == 0 and "resumed queue faas-request" in resumed.stdout
    helped = await asyncio.to_thread(run, "pause", "--help")
    assert "examples:" in helped.stdout and "RFC 3339" in helped.stdout and "maxEventAge" in helped.stdout
