"""callstatus.py: a call's status is its own record, or its submission record until it has one (or while the one
there is an earlier call's under the same id); a compare-and-set is always made against the call's own record."""

from __future__ import annotations

from jetqueue import callstatus
from jetqueue.callstatus import StatusStore
from jetqueue.contract import Call, CallState, jetstream
from tests.helpers import connect


async def test_the_submission_record_shows_until_the_call_has_its_own(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    call = Call(call_id="c1", queue="q", function="f", start_time_ns=1)
    assert await store.get("c1") is None
    await store.submitted_confirmed(callstatus.base_record(call, CallState.QUEUED))
    entry = await store.get("c1")
    assert entry is not None and entry.record["state"] == "queued" and entry.revision == 0  # 0: a write creates
    revision = await store.update("c1", callstatus.base_record(call, CallState.RUNNING, attempt=1), None)
    entry = await store.get("c1")
    assert entry is not None and entry.record["state"] == "running" and entry.revision == revision
    await nc.close()


async def test_a_later_call_under_the_same_id_shows_over_the_earlier_call_s_record(nats_server):
    """Sent again under its id once the duplicate window is over: the new submission shows, and a cancel of it
    replaces the earlier call's record (compare-and-set against that record's revision)."""
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    earlier, later = (Call(call_id="again", queue="q", function="f", start_time_ns=t) for t in (1, 2))
    done = await store.update("again", callstatus.base_record(earlier, CallState.SUCCEEDED, attempt=1), None)
    await store.submitted_confirmed(callstatus.base_record(later, CallState.QUEUED))
    entry = await store.get("again")
    assert entry is not None and entry.record["state"] == "queued" and entry.record["start"] == 2
    assert entry.revision == done
    await store.update("again", {**entry.record, "state": CallState.CANCELLED}, entry.revision)
    entry = await store.get("again")
    assert entry is not None and entry.record["state"] == "cancelled" and entry.record["start"] == 2
    await nc.close()


async def test_an_earlier_submission_does_not_hide_the_call_s_own_record(nats_server):
    nc = await connect(nats_server.url)
    store = StatusStore(nc.jetstream(), jetstream.status_bucket("q", 60))
    call = Call(call_id="c2", queue="q", function="f", start_time_ns=5)
    await store.submitted_confirmed(callstatus.base_record(call, CallState.QUEUED))
    await store.update("c2", callstatus.base_record(call, CallState.SUCCEEDED, attempt=1), None)
    entry = await store.get("c2")
    assert entry is not None and entry.record["state"] == "succeeded"
    await nc.close()
