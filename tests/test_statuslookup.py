"""statuslookup.py: a call's status from its id alone, across queues, status buckets of another partition count
and the buckets of before partitions (the upgrade path), on a real nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nats.js.api import KeyValueConfig
from nats.js.errors import NotFoundError

from jetqueue import callstatus, contract
from jetqueue.callstatus import QueueStatus
from jetqueue.contract import Call, CallState
from jetqueue.statuslookup import StatusLookup
from tests.helpers import (
    connect,
    enqueue,
    gateway_settings,
    post,
    running_gateway,
    running_worker,
    worker_settings,
)
from tests.servers import eventually

QUEUES = {"alpha": 1, "beta": 1, "gamma": 3, contract.DEFAULT_QUEUE: 1}


def routes(tmp: Path) -> str:
    path = tmp / "routes.json"
    table = {
        "routes": {f"fn-{q}": q for q in QUEUES},
        "queues": {q: {"partitions": n} for q, n in QUEUES.items()},
    }
    path.write_text(json.dumps(table))
    return str(path)


async def test_status_is_found_by_id_alone_in_the_call_s_own_queue(nats_server, functions, tmp_path, http):
    nc = await connect(nats_server.url)
    reads: list[str] = []

    async def read(msg: object) -> None:
        reads.append(getattr(msg, "subject", ""))

    async with running_gateway(gateway_settings(nats_server.url, routes_file=routes(tmp_path))) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        made: dict[str, str] = {}  # call id -> queue
        for q in QUEUES:
            for own in (None, f"mine-{q}"):
                headers = {"X-Call-Id": own} if own else {}
                async with http.post(f"{base}/async-function/fn-{q}", data=b"", headers=headers) as r:
                    assert r.status == 202
                    made[r.headers["X-Call-Id"]] = q
        gw.accept._recent.clear()  # read from the buckets, not from the gateway's memory
        for call_id, q in made.items():
            async with http.get(f"{base}/async-calls/{call_id}") as r:
                assert r.status == 200 and (await r.json())["queue"] == q, call_id
        hinted = next(c for c, q in made.items() if q == "beta" and not c.startswith("mine-"))
        subs = [await nc.subscribe(s, cb=read) for s in ("$JS.API.DIRECT.GET.>", "$JS.API.STREAM.MSG.GET.>")]
        await nc.flush()
        async with http.get(f"{base}/async-calls/{hinted}") as r:
            assert (await r.json())["state"] == "queued"
        await nc.flush()  # every read the lookup made is in this connection now; its callback runs a moment later
        await eventually(lambda: bool(reads), timeout=30)
        await asyncio.sleep(0.2)  # the rest of them, if the lookup made more than one
        for sub in subs:
            await sub.unsubscribe()
        streams = {s.split(".")[4 if ".DIRECT." in s else 5] for s in reads}
        assert streams == {contract.kv_stream_name(contract.status_bucket_name("beta"))}  # the id told which
        async with http.get(f"{base}/async-calls/no-such-call") as r:
            assert r.status == 404
        async with running_worker(
            worker_settings(nats_server.url, functions.url_template, queue="gamma", partitions=3)
        ):
            gamma = [c for c, q in made.items() if q == "gamma"]
            await eventually(lambda: sorted(functions.completed["fn-gamma"]) == sorted(gamma))
            for call_id in gamma:
                for _ in range(100):
                    async with http.get(f"{base}/async-calls/{call_id}") as r:
                        if (await r.json())["state"] == "succeeded":
                            break
                    await asyncio.sleep(0.05)
                assert (await r.json())["state"] == "succeeded"
    js = nc.jetstream()
    for legacy in (contract.LEGACY_STATUS_BUCKET, contract.LEGACY_CANCEL_BUCKET):
        try:
            await js.stream_info(contract.kv_stream_name(legacy))
            raise AssertionError(f"{legacy} was created")
        except NotFoundError:
            pass
    await nc.close()


async def test_records_of_another_partition_count_are_still_found(nats_server):
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    written = QueueStatus.of(js, "q", 3, 60)  # as the workers wrote them with 3 partitions
    ids = [contract.new_call_id("q") for _ in range(12)]
    assert {contract.status_shard(i, 3) for i in ids} - {0}  # some went beyond the first bucket
    for call_id in ids:
        call = Call(call_id=call_id, queue="q", function="f")
        await written.store(call_id).update(call_id, callstatus.base_record(call, CallState.SUCCEEDED), None)
    now = StatusLookup(js, {"q": QueueStatus.of(js, "q", 1, 60)})  # the queue has one partition now
    for call_id in ids:
        entry = await now.get(call_id)
        assert entry is not None and entry.record["state"] == "succeeded" and entry.revision > 0
    assert await now.get(contract.new_call_id("q")) is None
    await nc.close()


async def test_the_upgrade_keeps_old_records_and_cancels(nats_server, functions, http):
    """Records and cancels written the way of before partitions (one bucket for every queue) keep working: the
    gateway reads them, workers honour the cancels, and a cancel is stored there too while the bucket exists."""
    nc = await connect(nats_server.url)
    js = nc.jetstream()
    old_calls = await js.create_key_value(KeyValueConfig(bucket=contract.LEGACY_STATUS_BUCKET, history=1, ttl=3600))
    old_cancels = await js.create_key_value(KeyValueConfig(bucket=contract.LEGACY_CANCEL_BUCKET, history=1))
    q = contract.DEFAULT_QUEUE
    running = Call(call_id="old-running", queue=q, function="echo", start_time_ns=5)
    queued = Call(call_id="old-queued", queue=q, function="echo", start_time_ns=6)
    await old_calls.put("old-running", json.dumps(callstatus.base_record(running, CallState.RUNNING)).encode())
    await old_calls.put(
        contract.submission_key("old-queued"), json.dumps(callstatus.base_record(queued, CallState.QUEUED)).encode()
    )
    await old_cancels.put("old-cancelled", json.dumps({"start": 7}).encode())  # cancelled by an old gateway
    async with running_gateway(gateway_settings(nats_server.url)) as gw:
        base = f"http://127.0.0.1:{gw.s.http_port}"
        for call_id, state in (("old-running", "running"), ("old-queued", "queued")):
            async with http.get(f"{base}/async-calls/{call_id}") as r:
                assert r.status == 200 and (await r.json())["state"] == state
        assert (await post(http, f"{base}/async-function/echo", b"", **{"X-Call-Id": "new-cancelled"})).status == 202
        async with http.delete(f"{base}/async-calls/new-cancelled") as r:
            assert r.status == 202
        assert (await old_cancels.get("new-cancelled")).value  # an old worker would see it too
        await enqueue(nc, "echo", call_id="old-cancelled", start_time_ns=7)  # queued before the upgrade
        await enqueue(nc, "echo", call_id="fresh")
        async with running_worker(worker_settings(nats_server.url, functions.url_template)):
            await eventually(lambda: functions.completed["echo"] == ["fresh"])
            for call_id in ("old-cancelled", "new-cancelled"):
                for _ in range(100):
                    async with http.get(f"{base}/async-calls/{call_id}") as r:
                        if r.status == 200 and (await r.json())["state"] == "cancelled":
                            break
                    await asyncio.sleep(0.05)
                assert (await r.json())["state"] == "cancelled", call_id
    assert functions.calls["echo"] == ["fresh"]
    await nc.close()
