"""statuswriter.py: status writes off the call's slot: coalesced, compare-and-set, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from dataclasses import replace

import pytest

from jetqueue import callstatus, contract
from jetqueue.callstatus import QueueStatus, StatusStore
from jetqueue.contract import Call, CallState, jetstream
from jetqueue.queueworker.statuswriter import IN_FLIGHT, StatusWriter, ahead
from tests.helpers import connect, gateway_settings, post, running_gateway, running_worker, worker_settings
from tests.servers import eventually


def record(call: Call, state: CallState, attempt: int = 1) -> callstatus.Record:
    return callstatus.base_record(call, state, attempt=attempt)


BUCKET = contract.status_bucket_name("q")  # queue q's one status bucket


def one_bucket(store: StatusStore) -> QueueStatus:
    """The status of a queue of one partition: one bucket."""
    return QueueStatus([store])


async def writes(nc) -> int:
    """Messages ever stored in the status bucket's stream (every write adds one)."""
    return int((await nc.jetstream().stream_info(contract.kv_stream_name(BUCKET))).state.last_seq)


async def test_a_call_that_ends_within_the_grace_costs_one_write(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    await store.bucket()
    writer = StatusWriter(one_bucket(store))
    await writer.start()
    call = Call(call_id="fast", queue="q", function="f")
    writer.started("fast", lambda: record(call, CallState.RUNNING))
    await writer.final(record(call, CallState.SUCCEEDED))
    await writer.close(5)
    assert await writes(nc) == 1
    assert json.loads((await (await store.bucket()).get("fast")).value or b"")["state"] == "succeeded"  # type: ignore[union-attr]
    await nc.close()


async def test_a_record_further_along_is_not_overwritten(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    call = Call(call_id="twice", queue="q", function="f")
    await store.update("twice", record(call, CallState.SUCCEEDED, attempt=3), None)  # another worker, later
    writer = StatusWriter(one_bucket(store), grace=0)
    await writer.start()
    writer.report(record(call, CallState.RUNNING, attempt=2))
    await writer.close(5)
    entry = await store.get("twice")
    assert entry is not None and entry.record["state"] == "succeeded" and entry.record["attempt"] == 3
    await nc.close()


def test_ahead():
    call = Call(call_id="c", queue="q", function="f", start_time_ns=100)
    later = Call(call_id="c", queue="q", function="f", start_time_ns=200)
    assert ahead(record(call, CallState.SUCCEEDED), record(call, CallState.RUNNING))
    assert not ahead(record(call, CallState.QUEUED, 0), record(call, CallState.RUNNING))
    assert not ahead(record(call, CallState.CANCELLED, 0), record(call, CallState.SUCCEEDED))
    assert ahead(record(later, CallState.QUEUED, 0), record(call, CallState.SUCCEEDED, 5))  # a newer call's
    assert not ahead(record(call, CallState.SUCCEEDED, 5), record(later, CallState.RUNNING))


async def test_a_call_running_past_the_grace_gets_its_running_record(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    await store.bucket()
    writer = StatusWriter(one_bucket(store), grace=0.1)
    await writer.start()
    call = Call(call_id="slow", queue="q", function="f")
    writer.started("slow", lambda: record(call, CallState.RUNNING))

    async def running() -> bool:
        entry = await store.get("slow")
        return entry is not None and entry.record["state"] == "running"

    for _ in range(100):
        if await running():
            break
        await asyncio.sleep(0.05)
    assert await running()
    await writer.final(record(call, CallState.SUCCEEDED))
    await writer.close(5)
    entry = await store.get("slow")
    assert entry is not None and entry.record["state"] == "succeeded" and await writes(nc) == 2
    await nc.close()


@pytest.mark.parametrize("direct", [True, False], ids=["bucket-allowing-direct-gets", "plain-bucket"])
async def test_an_earlier_attempt_s_record_is_read_first_and_replaced(nats_server, direct):
    """An earlier attempt's record (or a deleted key, or none at all) is read, then replaced by compare-and-set."""
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), replace(jetstream.status_bucket("q", 60), direct=direct))
    kv = await store.bucket()
    assert kv is not None
    queued, deleted, missing = (Call(call_id=i, queue="q", function="f") for i in ("queued", "deleted", "missing"))
    await store.update("queued", record(queued, CallState.QUEUED, attempt=0), None)
    await store.update("deleted", record(deleted, CallState.QUEUED, attempt=0), None)
    await kv.delete("deleted")
    writer = StatusWriter(one_bucket(store))
    await writer.start()
    for call in (queued, deleted, missing):
        await writer.final(record(call, CallState.SUCCEEDED), read_first=True)
    await writer.close(5)
    for call in (queued, deleted, missing):
        entry = await store.get(call.call_id)
        assert entry is not None and entry.record["state"] == "succeeded", call.call_id
    await nc.close()


async def test_a_bucket_deleted_underneath_is_made_again(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    store = StatusStore(js, jetstream.status_bucket("q", 60))
    await store.bucket()
    writer = StatusWriter(one_bucket(store))
    await writer.start()
    await js.delete_key_value(BUCKET)
    call = Call(call_id="again", queue="q", function="f")
    await writer.final(record(call, CallState.SUCCEEDED))
    await writer.close(10)
    entry = await store.get("again")
    assert entry is not None and entry.record["state"] == "succeeded"
    await nc.close()


async def test_a_bucket_that_never_answers_holds_no_call_for_long(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    await store.bucket()
    writer = StatusWriter(one_bucket(store), limit=4)
    await writer.start()
    assert nats_server.proc is not None
    os.kill(nats_server.proc.pid, signal.SIGSTOP)  # connected, and silent
    try:
        t0 = time.monotonic()
        for i in range(IN_FLIGHT + 4 + 3):  # every write in flight, the backlog (4) full, then three more
            await writer.final(record(Call(call_id=f"c{i}", queue="q", function="f"), CallState.SUCCEEDED))
        assert time.monotonic() - t0 < 3 * 1.5 + 5  # each of the three waits about FINAL_ROOM_WAIT, not for NATS
        assert writer.dropped == 3
    finally:
        os.kill(nats_server.proc.pid, signal.SIGCONT)
    await writer.close(0.1)
    await nc.close()


async def test_a_dropped_record_leaves_nothing_remembered():
    writer = StatusWriter(
        one_bucket(StatusStore(None, jetstream.status_bucket("q", 60))), limit=1
    )  # not started: the backlog stays full
    call = Call(call_id="a", queue="q", function="f")
    writer.report(record(call, CallState.RUNNING), read_first=True)
    for i in range(50):
        other = Call(call_id=f"b{i}", queue="q", function="f")
        writer.report(record(other, CallState.RETRYING), read_first=True)  # dropped: the backlog is full
    assert writer._read_first == {"a"}


async def test_a_gateway_call_costs_the_worker_one_write_and_no_read(nats_server, functions, http):
    """The gateway's `queued` record is its submission record, under a key of its own: the worker creates the
    call's record (one round trip) instead of reading the gateway's and replacing it (two)."""
    nc = await connect(nats_server.url)
    bucket = contract.status_bucket_name(contract.DEFAULT_QUEUE)
    stream = contract.kv_stream_name(bucket)
    reads: list[str] = []
    written: dict[str, list[tuple[str | None, str]]] = {}  # key -> (expected last sequence, state) of each write

    async def read(msg) -> None:
        reads.append(msg.subject)

    async def wrote(msg) -> None:  # every write is a publish on the key's subject: seen here as it is sent
        key = msg.subject.removeprefix(contract.kv_subject(bucket, ""))
        expected = (msg.headers or {}).get("Nats-Expected-Last-Subject-Sequence")
        written.setdefault(key, []).append((expected, json.loads(msg.data)["state"]))

    subs = [
        await nc.subscribe(f"$JS.API.DIRECT.GET.{stream}.>", cb=read),
        await nc.subscribe(f"$JS.API.STREAM.MSG.GET.{stream}", cb=read),
        await nc.subscribe(contract.kv_subject(bucket, ">"), cb=wrote),
    ]
    ids = [f"gw-{i}" for i in range(20)]
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        for call_id in ids:
            assert (await post(http, f"{base}/async-function/echo", b"x", **{"X-Call-Id": call_id})).status == 202
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: all(written.get(i, [(None, "")])[-1][1] == "succeeded" for i in ids), timeout=20)
        for sub in subs:
            await sub.unsubscribe()
        assert reads == []
        for call_id in ids:
            assert written[contract.submission_key(call_id)] == [(None, "queued")]
            assert written[call_id][0][0] == "0"  # created; a running record (past the grace) then a final one
        async with http.get(f"{base}/async-calls/{ids[0]}") as r:
            assert (await r.json())["state"] == "succeeded"
    await nc.close()
