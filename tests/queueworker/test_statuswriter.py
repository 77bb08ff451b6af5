"""statuswriter.py: status writes off the call's slot: coalesced, compare-and-set, bounded."""

from __future__ import annotations

import asyncio
import json
import time

from jetqueue import callstatus, contract
from jetqueue.callstatus import StatusStore
from jetqueue.contract import Call, CallState, jetstream
from jetqueue.queueworker.statuswriter import WRITERS, StatusWriter, ahead
from tests.helpers import connect


def record(call: Call, state: CallState, attempt: int = 1) -> callstatus.Record:
    return callstatus.base_record(call, state, attempt=attempt)


async def writes(nc) -> int:
    """Messages ever stored in the status bucket's stream (every write adds one)."""
    return int((await nc.jetstream().stream_info(f"KV_{contract.STATUS_BUCKET}")).state.last_seq)


async def test_a_call_that_ends_within_the_grace_costs_one_write(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket(60))
    await store.bucket()
    writer = StatusWriter(store)
    writer.start()
    call = Call(call_id="fast", queue="q", function="f")
    writer.report(record(call, CallState.RUNNING))
    await writer.final(record(call, CallState.SUCCEEDED))
    await writer.close(5)
    assert await writes(nc) == 1
    assert json.loads((await (await store.bucket()).get("fast")).value or b"")["state"] == "succeeded"  # type: ignore[union-attr]
    await nc.close()


async def test_a_record_further_along_is_not_overwritten(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket(60))
    call = Call(call_id="twice", queue="q", function="f")
    await store.update("twice", record(call, CallState.SUCCEEDED, attempt=3), None)  # another worker, later
    writer = StatusWriter(store, grace=0)
    writer.start()
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


class Hanging(StatusStore):
    """A bucket that never answers."""

    def __init__(self) -> None:
        super().__init__(None, jetstream.status_bucket(60))

    async def write(self, call_id: str, value: bytes, last: int | None) -> int:
        await asyncio.sleep(3600)
        return 0

    async def get(self, call_id: str) -> callstatus.Entry | None:
        return None


async def test_a_failing_bucket_holds_no_call_for_long():
    writer = StatusWriter(Hanging(), limit=4)
    writer.start()
    t0 = time.monotonic()
    for i in range(WRITERS + 4 + 3):  # every writer stuck, the backlog (4) full, then three more
        await writer.final(record(Call(call_id=f"c{i}", queue="q", function="f"), CallState.SUCCEEDED))
        await asyncio.sleep(0)  # let a writer take what it can
    assert time.monotonic() - t0 < 3 * 1.5 + 5  # each of the three waits about FINAL_ROOM_WAIT, not for the bucket
    assert writer.dropped >= 1
    await writer.close(0.1)


async def test_a_dropped_record_leaves_nothing_remembered():
    writer = StatusWriter(Hanging(), limit=1)  # not started: the backlog stays full
    call = Call(call_id="a", queue="q", function="f")
    writer.report(record(call, CallState.RUNNING), read_first=True)
    for i in range(50):
        other = Call(call_id=f"b{i}", queue="q", function="f")
        writer.report(record(other, CallState.RETRYING), read_first=True)  # dropped: the backlog is full
    assert writer._read_first == {"a"}
